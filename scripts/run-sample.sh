#!/usr/bin/env bash
# The main job, end to end: install what is missing, build the runtime and the sample image,
# deploy it into a fresh workdir, and run a command in it with `ya-runtime-vm run`.
#   Usage: scripts/run-sample.sh [COMMAND...]   (default: uname -a; cat /etc/motd; ls /golem)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

bash scripts/setup.sh
cargo build --quiet -p ya-runtime-vm
bash scripts/build-runtime.sh >/dev/null
image=$(bash scripts/build-sample-image.sh)
workdir=$(mktemp -d "${TMPDIR:-/tmp}/ya-runtime-vm-sample.XXXXXX")
trap 'rm -rf "$workdir"' EXIT
bin="$REPO_ROOT/target/debug/ya-runtime-vm"
common=(--workdir "$workdir" --task-package "$image")

say "deploy: $image"
"$bin" "${common[@]}" deploy --
if [ $# -eq 0 ]; then
  set -- /bin/sh -c 'uname -a; cat /etc/motd; ls /golem'
fi
say "run: $*"
"$bin" "${common[@]}" run --entrypoint "$1" -- "${@:2}"
