#!/usr/bin/env bash
# Benchmark of the image loader: a 1 GiB package served over loopback HTTP, fetched into a fresh
# cache with its sha3-256 pinned (download + verify), against sha3-256 alone over the same file
# (page cache warm for both). Prints the medians and their ratio; the aim is a ratio <= 1.3,
# i.e. hashing overlapped with the transfer.
#   BENCH_SIZE_MIB (default 1024), BENCH_RUNS (default 3)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

size_mib=${BENCH_SIZE_MIB:-1024}
runs=${BENCH_RUNS:-3}
work="$REPO_ROOT/target/bench-loader"
mkdir -p "$work/serve"

cargo build --quiet --release -p image-loader --example fetch --example sha3sum
cargo build --quiet --release -p test-fixtures --bin http-fixture
bin="$REPO_ROOT/target/release"

pkg="$work/serve/package-${size_mib}m.gvmi"
if [ ! -f "$pkg" ] || [ "$(stat -c %s "$pkg")" -ne $((size_mib * 1024 * 1024)) ]; then
  say "bench: writing a ${size_mib} MiB package"
  rm -f "$work"/serve/*
  head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$pkg.tmp"
  mv "$pkg.tmp" "$pkg"
fi

"$bin/http-fixture" "$work/serve" 127.0.0.1:0 >"$work/url" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work/cache"' EXIT
for _ in $(seq 50); do [ -s "$work/url" ] && break; sleep 0.1; done
base=$(cat "$work/url")
[ -n "$base" ] || die "the HTTP fixture did not start"

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

hash_times=() fetch_times=()
digest=
for i in $(seq "$runs"); do
  t0=$(now); digest=$("$bin/examples/sha3sum" "$pkg" | cut -d' ' -f1); t1=$(now)
  hash_times+=("$(calc "$t1 - $t0")")
done
for i in $(seq "$runs"); do
  rm -rf "$work/cache"
  t0=$(now)
  "$bin/examples/fetch" "hash:sha3:$digest:$base/$(basename "$pkg")" "$work/cache" >/dev/null
  t1=$(now)
  fetch_times+=("$(calc "$t1 - $t0")")
done

hash_med=$(printf '%s\n' "${hash_times[@]}" | median)
fetch_med=$(printf '%s\n' "${fetch_times[@]}" | median)
ratio=$(calc "$fetch_med / $hash_med")
printf 'package size             %8d MiB\n' "$size_mib"
printf 'sha3-256 alone           %8.2f s  (%.0f MiB/s)  runs: %s\n' "$hash_med" "$(calc "$size_mib / $hash_med")" "${hash_times[*]}"
printf 'download + verify        %8.2f s  (%.0f MiB/s)  runs: %s\n' "$fetch_med" "$(calc "$size_mib / $fetch_med")" "${fetch_times[*]}"
printf 'ratio download/hash      %8.2f    (aim <= 1.30)\n' "$ratio"
