#!/usr/bin/env bash
# Fuzz targets (fuzz/, cargo-fuzz with the nightly toolchain): builds every target in one
# `cargo +nightly fuzz build`, then runs each briefly over its committed seed corpus
# (fuzz/corpus/<target>/), failing on any crash, failed assertion, timeout or leak.
# The long runs and their figures are in docs/security.md ("Fuzzing").
#   RELAIS_FUZZ_SECONDS  seconds per target (default 15)
# New corpus entries go to a scratch directory: the committed corpus is only read. A fixed
# -seed makes each run explore the same inputs (as far as its time allows), so a crash
# found here can be replayed; the long runs (docs/security.md) use random seeds.
# Needs cargo-fuzz (tests/setup/install-deps.sh installs it when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET=${RELAIS_FUZZ_SECONDS:-15}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (cargo-fuzz needs it)" >&2
  exit 1
fi

(cd fuzz && cargo fmt --check)
cargo +nightly fuzz build
targets=$(cargo +nightly fuzz list)
[ -n "$targets" ] || { echo "fuzz: no fuzz target found" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $targets; do
  seeds="fuzz/corpus/$target"
  if ! ls "$seeds"/seed-* >/dev/null 2>&1; then
    echo "fuzz: $target has no committed seed corpus in $seeds" >&2
    exit 1
  fi
  mkdir -p "$scratch/$target"
  echo "-- fuzz $target (${SECONDS_PER_TARGET}s)"
  # The log is printed only on failure (the reproducer is in fuzz/artifacts/$target/).
  if ! cargo +nightly fuzz run "$target" "$scratch/$target" "$seeds" -- \
      -seed=1 -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz: $target failed" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$scratch/$target.log" | sed "s/^/   $target /" || true
done
echo "fuzz: all targets passed"
