#!/usr/bin/env bash
# Installs what the test suite needs when it is missing. Idempotent and quiet when
# everything is there already. Each component adds its own lines here.
set -euo pipefail

apt_updated=0
need_apt() {
  # need_apt COMMAND PACKAGE: installs PACKAGE when COMMAND is not on the PATH.
  if ! command -v "$1" >/dev/null 2>&1; then
    if [ "$apt_updated" = 0 ]; then
      apt-get update -qq
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (Rust toolchain)" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

# Redis bus tests start a real redis-server.
need_apt redis-server redis-server

# Widget browser tests (tests/suites/browser.sh): Debian's Chromium, Node.js and npm (the
# pinned playwright-core is installed by the suite itself with `npm ci`; it never downloads
# a browser).
need_apt chromium chromium
need_apt node nodejs
need_apt npm npm
