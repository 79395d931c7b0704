#!/usr/bin/env bash
# The plugin and store soak: property tests at 100,000 cases each (decoding of arbitrary
# configs and environments; the store against its model under random reserve, release, GC and
# crashes), every ADD/DEL crash point hit 60 times (1,080 killed runs, each followed by the
# runtime's DEL), and 60 rounds of 16 concurrent ADDs killed at random instants. Run as root
# from anywhere; about 15 minutes on 2 cores. Its last result is in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CASES=${FLATNET_SOAK_CASES:-100000}
ROUNDS=${FLATNET_SOAK_ROUNDS:-60}
scripts/install-deps.sh
cargo build --workspace --quiet
start=$(date +%s)

echo "==> property tests, $CASES cases each (release build)"
PROPTEST_CASES=$CASES cargo test --release --quiet -p flatnet-core --lib -- \
  cni::call::tests::any_input_decodes_or_gets_a_spec_error \
  ipam::store::tests::model::the_store_matches_its_model

echo "==> crash points and random kills, $ROUNDS rounds"
FLATNET_SOAK_ROUNDS=$ROUNDS cargo test --quiet --test crash_points -- --nocapture --test-threads 1 \
  | grep -Ev '^\s+(ADD|DEL) '

echo "soak passed in $(( $(date +%s) - start )) s: $CASES property cases x 2, $ROUNDS rounds of every crash point and of random kills"
