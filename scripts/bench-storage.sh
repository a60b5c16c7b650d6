#!/usr/bin/env bash
# Storage benchmark: sequential write (`dd bs=1M conv=fsync`) and read of BENCH_MIB (256) MiB in
# the guest, to each place an activity's files can live, against the same dd on the host disk
# that holds the workdir. One VM (release build, TCG, 1 vCPU, 1 GiB so that a ram volume of that
# size fits) has the root's writable layer on its scratch disk, a ram volume, a storage volume
# and a host volume; a second VM has a `ram` override on / (the root's layer in guest RAM).
# Reads follow a drop of the guest's page cache; the host's stays warm, for the host dd too.
# Prints a markdown table of MiB/s and ratios to the host disk.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

mib=${BENCH_MIB:-256}
prepare_release_vm
bin="$TARGET_DIR/release/ya-runtime-vm"
export PATH="$TOOLS_DIR/bin:$PATH"

work=$(mktemp -d "$REPO_ROOT/target/bench-storage.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The seconds a host dd took, from its last line ("..., 1.5 s, ...").
dd_seconds() { awk -F', ' '{ split($(NF-1), a, " "); print a[1] }'; }
rate() { awk -v m="$mib" -v s="$1" 'BEGIN { printf "%.1f", m / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# The guest's part: "<place>|<write seconds>|<read seconds>" per target directory, timed with
# /proc/uptime (busybox dd prints no rate).
guest_script='
up() { cut -d" " -f1 /proc/uptime; }
for t in "$@"; do
  name=${t%%=*}; dir=${t#*=}
  mkdir -p "$dir"
  a=$(up); dd if=/dev/zero of="$dir/bench" bs=1M count='"$mib"' conv=fsync 2>/dev/null; b=$(up)
  sync; echo 3 > /proc/sys/vm/drop_caches
  c=$(up); dd if="$dir/bench" of=/dev/null bs=1M 2>/dev/null; d=$(up)
  rm -f "$dir/bench"
  echo "$name|$(awk "BEGIN { print $b - $a }")|$(awk "BEGIN { print $d - $c }")"
done'

run_vm() { # workdir, override, targets...
  local wd=$1 override=$2
  shift 2
  "$bin" --workdir "$wd" --task-package "$SAMPLE_IMAGE" --mem-gib 1 --storage-gib 1 \
    --volume-override "$override" run --entrypoint /bin/sh -- -c "$guest_script" sh "$@"
}

say "bench: host disk ($(df --output=target "$work" | tail -n 1))"
host_w=$(dd if=/dev/zero of="$work/host-bench" bs=1M count="$mib" conv=fsync 2>&1 | tail -n 1 | dd_seconds)
host_r=$(dd if="$work/host-bench" of=/dev/null bs=1M 2>&1 | tail -n 1 | dd_seconds)
rm -f "$work/host-bench"

say "bench: VM 1 (root layer on disk, ram, storage and host volumes)"
results=$(run_vm "$work/vm1" \
  '{"/ram": {"ram": {"size": "'$((mib + 32))'MiB"}}, "/data": {"storage": {"size": "'$((mib + 64))'MiB"}}}' \
  "root layer, on its scratch disk=/var/bench" "ram volume (tmpfs)=/ram" \
  "storage volume (scratch disk)=/data" "host volume (virtio-fs)=/golem/output")
say "bench: VM 2 (root layer in RAM)"
results+=$'\n'$(run_vm "$work/vm2" '{"/": {"ram": {"size": "'$((mib + 64))'MiB"}}}' \
  "root layer in RAM (ram on /)=/var/bench")

echo
echo "| $mib MiB, dd bs=1M | write MiB/s | vs host | read MiB/s | vs host |"
echo "| --- | --- | --- | --- | --- |"
echo "| host disk (reference) | $(rate "$host_w") | 1.00 | $(rate "$host_r") | 1.00 |"
while IFS='|' read -r name w r; do
  [ -n "$name" ] || continue
  echo "| $name | $(rate "$w") | $(ratio "$host_w" "$w") | $(rate "$r") | $(ratio "$host_r" "$r") |"
done <<<"$results"
