#!/usr/bin/env bash
# Issue 7's side-by-side benchmarks in one command, as root:
#
#   bench/run.sh [--quick] [--reps N] [--growth PODS] [--only cni,agent,datapath,antispoof,bringup,netpol,services,overlay]
#
# Builds the release binaries once (flatnet, flatnet-cni, noop-cni, flatnet-bench), then runs
# every section and prints Markdown tables; results also go to bench/results/ (results.md,
# results.json). Everything the run makes is named after one tag (fbench<pid>): namespaces
# `fbench<pid>-…` and the emulated clusters' `flatnet-fbench<pid>-…`, files under
# /dev/shm/fbench<pid>. The trap below removes all of it by name, also after Ctrl-C or a crash;
# nothing is created in the machine's own network namespace. Set FBENCH_NO_BUILD=1 to skip the
# build (the binaries must be in target/release).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [[ $EUID -ne 0 ]]; then
  echo "bench/run.sh: run as root (it creates network namespaces)" >&2
  exit 1
fi
for tool in ip iperf3; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
for p in /usr/lib/cni/ptp /usr/lib/cni/host-local; do
  [[ -x $p ]] || { echo "bench/run.sh: $p is missing (apt-get install containernetworking-plugins)" >&2; exit 1; }
done

if [[ -z ${FBENCH_NO_BUILD:-} ]]; then
  echo "==> cargo build --release (flatnet, flatnet-cni, flatnet-bench + noop-cni)" >&2
  cargo build --release -p flatnet -p flatnet-cni -p flatnet-bench >&2
fi
BIN=$ROOT/target/release
TAG=fbench$$
WORK=/dev/shm/$TAG
OUT=${FBENCH_OUT:-$ROOT/bench/results}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The emulated clusters first (their agents run in sessions of their own).
  for c in conv dp emu np svc ovl ovc; do
    if [[ -d $WORK/state/$TAG-$c ]] || ip netns list 2>/dev/null | grep -q "^flatnet-$TAG-$c-"; then
      "$BIN/flatnet" down --name "$TAG-$c" --state-dir "$WORK/state" >/dev/null 2>&1 || true
    fi
  done
  # Then any namespace of this run still there, with whatever this run started inside it.
  local ns pid left=0
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^(flatnet-)?$TAG-" || true); do
    left=$((left + 1))
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf -- "$WORK"
  if ((left > 0)); then
    echo "==> cleanup: removed $left leftover namespaces of $TAG" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> flatnet-bench (tag $TAG); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$BIN/flatnet-bench" --tag "$TAG" --work "$WORK" --out "$OUT" "$@"
