#!/usr/bin/env bash
# Builds the sample image: a busybox-static root file system (no Docker needed) with the VOLUMEs,
# environment and working directory a typical Golem image has, packed as GVMI.
# Prints the image path. Output: target/images/sample.gvmi (rebuilt when this script changes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

out_dir="$REPO_ROOT/target/images"
out="$out_dir/sample.gvmi"
stamp="$out_dir/sample.stamp"
want=$(cat "${BASH_SOURCE[0]}" "$REPO_ROOT/scripts/common.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$out"; exit 0
fi

cargo build --quiet -p gvmi-build

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
busybox_rootfs "$root"
mkdir -p "$root"/golem/{input,output,work}
echo "sample image for ya-runtime-vm" >"$root/etc/motd"
cat >"$work/config.json" <<'JSON'
{"Hostname":"","User":"","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","GOLEM_SAMPLE=1"],"Cmd":["/bin/sh"],"Entrypoint":null,"WorkingDir":"/golem/work","Volumes":{"/golem/input":{},"/golem/output":{}},"Labels":null,"OnBuild":null}
JSON
mkdir -p "$out_dir"
"$REPO_ROOT/target/debug/gvmi-build" "$root" -o "$out" --config "$work/config.json" --compression lz4 \
  >/dev/null
echo "$want" >"$stamp"
echo "$out"
