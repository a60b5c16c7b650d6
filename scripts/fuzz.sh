#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes (fuzz/src/lib.rs) with AFL++ on the stable toolchain,
# each for a fixed time, starting from the corpus kept in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [--save] [SECONDS_PER_TARGET (default 60)] [TARGET...]
#
# Prints, per target, the executions, the new inputs found and the crashes. Exits non-zero when a
# target crashed or hung; the inputs are copied to target/fuzz/crashes/<target>/ and the line to
# reproduce one is printed. --save merges what the run found into the kept corpus, minimised
# (afl-cmin, replacing the corpus with a set that covers at least as much), so the suite's corpus replay (fuzz/tests/corpus.rs) covers it from then on.
# Installs cargo-afl (pinned, into $TOOLS_DIR) and builds AFL++'s runtime once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

CARGO_AFL_VERSION=0.18.2
save=
if [ "${1:-}" = "--save" ]; then save=1; shift; fi
seconds=${1:-60}
shift || true
case "$seconds" in ''|*[!0-9]*) die "seconds must be a whole number, got '$seconds'" ;; esac
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(agent_frames gvmi_trailer volume_override runtime_api_stream boot_params)

if [ ! -x "$TOOLS_DIR/bin/cargo-afl" ] || [ "$(cat "$TOOLS_DIR/stamps/cargo-afl" 2>/dev/null)" != "$CARGO_AFL_VERSION" ]; then
  say "fuzz: installing cargo-afl $CARGO_AFL_VERSION (once)"
  mkdir -p "$TOOLS_DIR/stamps"
  cargo install --quiet --locked --root "$TOOLS_DIR" "cargo-afl@$CARGO_AFL_VERSION" \
    || die "cargo install cargo-afl failed"
  echo "$CARGO_AFL_VERSION" >"$TOOLS_DIR/stamps/cargo-afl"
fi
# Builds AFL++ for this rustc once; says so (and fails) when it is already there.
cargo afl config --build >/dev/null 2>&1 || true

# Instrumented builds in a target dir of their own, so they never replace the normal ones.
export CARGO_TARGET_DIR="$REPO_ROOT/target/afl"
say "fuzz: building the instrumented targets"
cargo afl build --quiet --release -p fuzz-targets --features afl
bin="$CARGO_TARGET_DIR/release/fuzz"

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_QUIET=1
failed=0
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || die "no target '$t' (fuzz/corpus/$t is missing)"
  out="$REPO_ROOT/target/fuzz/$t"
  rm -rf "$out"
  mkdir -p "$out"
  cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$seconds" -- "$bin" "$t" >"$out.log" 2>&1 \
    || { tail -n 5 "$out.log" >&2; die "afl-fuzz failed on $t (log: $out.log)"; }
  stat() { sed -n "s/^$1 *: *//p" "$out/default/fuzzer_stats"; }
  printf '%-20s %10s execs  %6s inputs  %s crashes  %s hangs\n' \
    "$t" "$(stat execs_done)" "$(stat corpus_count)" "$(stat saved_crashes)" "$(stat saved_hangs)"
  found=$(find "$out/default/crashes" "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | head -n 100)
  if [ -n "$found" ]; then
    failed=1
    mkdir -p "$REPO_ROOT/target/fuzz/crashes/$t"
    for f in $found; do cp "$f" "$REPO_ROOT/target/fuzz/crashes/$t/"; done
    say "fuzz: $t crashed or hung; reproduce with: cargo run -p fuzz-targets --bin fuzz -- $t target/fuzz/crashes/$t/<file>"
  elif [ -n "$save" ]; then
    merged="$out/merged"
    rm -rf "$merged"
    # The bash afl-cmin: the Python one that `cargo afl cmin` runs finds no tuples in a
    # persistent-mode target.
    cmin=$(find "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs" -path '*/bin/afl-cmin.bash' | head -n1)
    [ -n "$cmin" ] || die "afl-cmin.bash not found (cargo afl config --build)"
    "$cmin" -i "$out/default/queue" -o "$merged" -- "$bin" "$t" >"$out.cmin.log" 2>&1 \
      || die "afl-cmin failed on $t (log: $out.cmin.log)"
    # Inputs over 16 KiB are left out: they are large frames and streams the small ones cover.
    find "$merged" -type f -size +16k -delete
    if [ -n "$(ls -A "$merged")" ]; then
      # The minimised set replaces the corpus (it covers at least what the old one did), under
      # stable names: the content's hash.
      rm -rf "fuzz/corpus/$t"
      mkdir -p "fuzz/corpus/$t"
      for f in "$merged"/*; do
        cp "$f" "fuzz/corpus/$t/$(sha256sum "$f" | cut -c1-16)"
      done
    fi
    say "fuzz: $t corpus now $(ls "fuzz/corpus/$t" | wc -l) inputs"
  fi
done
exit $failed
