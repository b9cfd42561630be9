#!/usr/bin/env bash
# The whole relais test suite, from a fresh machine: installs what is missing (Debian
# packages, PyPI, npm), then runs formatting and lint checks, the Rust unit and
# integration tests (which start real relais processes, redis-server and Synapse), and the
# browser tests of the widget in Debian's Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

# Incremental compilation only pays when the same tree is built again and again; a run
# from a clean checkout would write about 5 GB of incremental state it never reads.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "== disk free where the build goes: $(df -h --output=avail . | tail -n 1 | tr -d ' ')"

echo "== installing test dependencies (only what is missing)"
bash tests/setup/install-deps.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test (unit + integration)"
cargo test --all-targets --locked -- --test-threads=2

for suite in tests/suites/*.sh; do
  [ -e "$suite" ] || continue
  echo "== $suite"
  bash "$suite"
done
echo "== all relais tests passed"
