#!/usr/bin/env bash
# Installs what metalnet's lab, demo and tests need on Debian, once: packages that are
# already there are not installed again, and apt-get update runs only when something is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "metalnet's lab creates network namespaces: run as root (sudo $0)" >&2
  exit 1
fi

# command -> Debian package providing it
declare -A NEED=(
  [ip]=iproute2 [bridge]=iproute2 [clang]=clang [llc]=llvm [bird]=bird2 [birdc]=bird2
  [vtysh]=frr [gobgpd]=gobgpd [gobgp]=gobgpd [arping]=arping [ndisc6]=ndisc6
  [iperf3]=iperf3 [tcpdump]=tcpdump [ping]=iputils-ping [iptables]=iptables [nft]=nftables
  [pgrep]=procps [curl]=curl [ethtool]=ethtool [cc]=gcc [pkg-config]=pkg-config [python3]=python3
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
[ -x /usr/lib/frr/bgpd ] || missing+=(frr)
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ -e /usr/include/x86_64-linux-gnu/asm/types.h ] || [ -e /usr/include/asm/types.h ] || missing+=(linux-libc-dev)
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Debian packages must not leave routing daemons running in the root namespace: the lab
# starts its own inside namespaces.
for svc in bird frr gobgpd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
    systemctl disable "$svc" >/dev/null 2>&1 || true
  fi
done

# Rust: stable toolchain >= 1.95 with clippy and rustfmt.
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi
if ! command -v cargo >/dev/null 2>&1; then
  if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: installing rustup (Debian package)"
    apt-get install -y -qq rustup >/dev/null || {
      echo "setup: no Rust toolchain and no rustup package; install Rust >= 1.95 (https://rustup.rs)" >&2
      exit 1
    }
  fi
  rustup toolchain install stable --profile minimal
fi
for comp in clippy rustfmt; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
