#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, lab and end-to-end tests.
# Run as root on Debian: installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

# Leftovers of an earlier interrupted run would confuse the lab tests.
cargo run -q -p metalnet-lab --bin metalnet-lab -- down >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# Not under -e/pipefail: a failing test must still reach the summary below.
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
set -e

# The lab must leave nothing behind.
left=$(ip netns list | grep -E '^mnl' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind:" >&2
  echo "$left" >&2
  status=1
fi
passed=$(grep -Eo '[0-9]+ passed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
echo "total: $passed passed, $failed failed"
exit "$status"
