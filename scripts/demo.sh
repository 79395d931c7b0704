#!/usr/bin/env bash
# The demo: builds flatnet and flatnet-cni, then runs `flatnet demo` (3 nodes, 2 pods each,
# a connectivity matrix that proves no NAT, the routes, the topology), and removes it all.
# Arguments go to `flatnet demo` (e.g. --keep, or --ip-family dual for a matrix per family).
# Run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --workspace --quiet
exec target/release/flatnet demo "$@"
