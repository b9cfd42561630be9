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
# deploy/ checks (tests/suites/deploy.sh): nginx -t and a live nginx, systemd-analyze, and
# the schema validators in their own venv (kept across runs under ~/.cache).
need_apt curl curl
# tests/vanished_client.rs cuts a client's link in a network namespace.
need_apt ip iproute2
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt nginx nginx
need_apt systemd-analyze systemd
need_apt python3 python3
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt __relais_python3_venv__ python3-venv  # no such command: always installs
fi
deploy_venv=${RELAIS_DEPLOY_VENV:-$HOME/.cache/relais-test/deploy-venv}
if ! "$deploy_venv/bin/python" -c 'import yaml, dockerfile, kubernetes_validate, check_jsonschema' >/dev/null 2>&1; then
  rm -rf "$deploy_venv"
  python3 -m venv "$deploy_venv"
  "$deploy_venv/bin/pip" install -q check-jsonschema==0.39.0 kubernetes-validate==1.37.0 dockerfile==3.4.0 pyyaml==6.0.3
fi

# Widget browser tests (tests/suites/browser.sh): Debian's Chromium, Node.js and npm (the
# pinned playwright-core is installed by the suite itself with `npm ci`; it never downloads
# a browser).
need_apt chromium chromium
need_apt node nodejs
need_apt npm npm

# Matrix alert tests start a real Synapse homeserver (PyPI matrix-synapse) in a virtualenv
# kept between runs (it is large); tests/setup/synapse.sh uses it and curl.
need_apt curl curl
synapse_venv=${SYNAPSE_VENV:-$HOME/.cache/relais-test/synapse-venv}
if ! "$synapse_venv/bin/python" -c 'import synapse.app.homeserver' >/dev/null 2>&1; then
  need_apt python3 python3
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian ships venv support separately from python3.
    if [ "$apt_updated" = 0 ]; then
      apt-get update -qq
      apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$synapse_venv"
  mkdir -p "$(dirname "$synapse_venv")"
  python3 -m venv "$synapse_venv"
  "$synapse_venv/bin/pip" install -q --disable-pip-version-check matrix-synapse==1.163.2
fi

# Fuzz targets (tests/suites/fuzz.sh): cargo-fuzz from crates.io, run with the nightly
# toolchain the machine image carries beside stable (`cargo +nightly fuzz`).
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
