#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing (setup.sh), then checks
# formatting and lints, and runs every test of the workspace (unit, property and integration
# tests, and the end-to-end tests that boot real VMs).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

bash scripts/setup.sh
say "test: building the guest runtime directory and the sample image"
bash scripts/build-runtime.sh >/dev/null
bash scripts/build-sample-image.sh >/dev/null
say "test: building the Debian package"
bash scripts/build-deb.sh >/dev/null

say "test: cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"
say "test: cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
say "test: running the test suite"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
