#!/usr/bin/env bash
# Debian packages the tests, the demo and the benchmarks use, installed only when missing.
# iproute2 (ip, the tests' independent witness), iputils-ping, Debian's reference CNI plugins
# (portmap for chaining; ptp and host-local for the benchmarks), iptables (portmap needs it),
# nftables, iperf3 (datapath benchmarks), librsvg2-bin (rsvg-convert, which renders the SVG
# pictures in tests), ethtool (the overlay tests' witness of a device's offloads).
set -euo pipefail

packages=(iproute2 iputils-ping procps python3 containernetworking-plugins iptables nftables iperf3 librsvg2-bin ethtool)

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: the tests and the demo create network namespaces" >&2
    exit 1
fi
"$(dirname "$0")/apt-ensure.sh" "${packages[@]}"
if ! command -v cargo >/dev/null; then
    echo "cargo is not installed: install a Rust toolchain (rustup) first" >&2
    exit 1
fi
