#!/usr/bin/env bash
# Browser tests of the dashboard widget (widget/), the DiagPV audit board (audit/) and
# their client (client/relais.js), and of Mercure 1.0 from a native EventSource: Debian's
# Chromium driven by
# playwright-core against the real relais binary. Builds relais if needed, installs the
# pinned npm test dependency when missing (never a browser download), runs `node --test`.
# Screenshots go to tests/artifacts/; RELAIS_UPDATE_SCREENSHOT=1 also refreshes docs/widget.png
# and docs/audit.png.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  echo "browser suite: /usr/bin/chromium is missing (tests/setup/install-deps.sh installs it)" >&2
  exit 1
fi

cargo build --locked --quiet --bin relais

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

mkdir -p tests/artifacts
cd tests/browser
# One file at a time: the machine has two cores shared with the relais processes.
exec node --test --test-concurrency=1 --test-timeout=120000 \
  *.test.js
