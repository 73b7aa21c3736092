#!/usr/bin/env bash
# The controller on the embedded default at scale: N Services (one file each) and one pool,
# reconciled from scratch and then again as a restart (`--once`, release build). Prints the
# wall time, the CPU time and the peak RSS of each run.
#
#   scripts/bench-controller.sh [N]        (default 20000)
#
# Wall time on a shared machine is dominated by the two fsyncs of every status write (three
# writes per Service from scratch: status, pool annotation, Event); CPU time is the steadier
# figure to compare builds by.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}
cargo build -q --release -p metalnet-controller
bin=$PWD/target/release/metalnet-controller
dir=$(mktemp -d /tmp/metalnet-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/services"
cat >"$dir/pool.yaml" <<EOF
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: bench
  namespace: metallb-system
spec:
  addresses:
  - 198.18.0.0/15
EOF
for ((i = 0; i < n; i++)); do
  printf 'apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-%05d\n  namespace: default\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n' "$i" \
    >"$dir/services/svc-$i.yaml"
done
for run in scratch restart; do
  /usr/bin/time -f "$n Services, $run: %e s wall, %U s user + %S s system, peak RSS %M KiB" \
    "$bin" --state-dir "$dir" --once --metrics-addr off --log-level warn
done
