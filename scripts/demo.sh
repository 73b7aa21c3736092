#!/usr/bin/env bash
# The lab demo on the embedded default: builds metalnet, brings up a virtual site (three
# nodes, an upstream router and clients in network namespaces), runs the components on a
# state directory and shows what to try. Ctrl-C tears everything down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
cargo build --release --workspace --bins
state_dir=${METALNET_DEMO_DIR:-$(mktemp -d /tmp/metalnet-demo.XXXXXX)}
exec ./target/release/metalnet-lab demo --state-dir "$state_dir" --bin-dir "$PWD/target/release" "$@"
