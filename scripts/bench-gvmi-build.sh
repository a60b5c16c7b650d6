#!/usr/bin/env bash
# Benchmark of gvmi-build: a generated multi-layer image (a docker save archive of BENCH_MIB,
# default 1024, MiB in 4 layers) converted, against mksquashfs alone over the already-merged tree
# in the same run (same compression), and the peak RSS of gvmi-build and its mksquashfs for that
# image and for one a quarter its size. Prints a markdown table.
#   BENCH_MIB (default 1024), BENCH_RUNS (default 2)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

bash "$REPO_ROOT/scripts/setup.sh"
cargo build --quiet --release -p gvmi-build -p e2e --bin gvmi-build --bin bench-gvmi-build
target_dir=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
work=$(mktemp -d "$target_dir/bench-gvmi-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$target_dir/release/bench-gvmi-build" "$target_dir/release/gvmi-build" "$work" \
  "${BENCH_MIB:-1024}" "${BENCH_RUNS:-2}"
