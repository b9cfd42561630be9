#!/usr/bin/env bash
# Runs a throw-away Synapse homeserver on loopback for the Matrix alert tests.
#
#   tests/setup/synapse.sh DIR PORT WATCH_PID [USER:PASSWORD[:admin]]...
#
# Generates a configuration in DIR (server name `localhost`, SQLite, listener on
# 127.0.0.1:PORT, registration closed, login/registration rate limits raised so a test
# can log several accounts in at once; the message rate limit `rc_message` keeps
# Synapse's default, 0.2/s with a burst of 10, so a test can meet a real 429), starts
# Synapse, waits for /_matrix/client/versions, registers the given accounts with
# register_new_matrix_user, prints `READY http://127.0.0.1:PORT` on stdout, then stays
# until process WATCH_PID (the test binary) is gone or SIGTERM, stops Synapse and removes
# DIR.
#
# Synapse comes from the virtualenv made by tests/setup/install-deps.sh
# ($SYNAPSE_VENV, default ~/.cache/relais-test/synapse-venv).
set -euo pipefail

dir=$1
port=$2
watch_pid=$3
shift 3
venv=${SYNAPSE_VENV:-$HOME/.cache/relais-test/synapse-venv}
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  echo "synapse.sh: no Synapse virtualenv at $venv (run tests/setup/install-deps.sh)" >&2
  exit 1
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$dir"
"$py" -m synapse.app.homeserver --server-name localhost --config-path homeserver.yaml \
  --generate-config --report-stats=no >/dev/null

"$py" - "$port" <<'EOF'
import sys, yaml
port = int(sys.argv[1])
with open("homeserver.yaml") as f:
    cfg = yaml.safe_load(f)
cfg["listeners"] = [{
    "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
    "x_forwarded": False,
    "resources": [{"names": ["client"], "compress": False}],
}]
cfg["enable_registration"] = False
cfg["trusted_key_servers"] = []
cfg["suppress_key_server_warning"] = True
cfg["report_stats"] = False
# Logging in and registering several test accounts quickly must not be refused.
cfg["rc_login"] = {
    "address": {"per_second": 1000, "burst_count": 1000},
    "account": {"per_second": 1000, "burst_count": 1000},
    "failed_attempts": {"per_second": 1000, "burst_count": 1000},
}
cfg["rc_registration"] = {"per_second": 1000, "burst_count": 1000}
cfg["rc_joins"] = {
    "local": {"per_second": 1000, "burst_count": 1000},
    "remote": {"per_second": 1000, "burst_count": 1000},
}
cfg["rc_invites"] = {
    "per_room": {"per_second": 1000, "burst_count": 1000},
    "per_user": {"per_second": 1000, "burst_count": 1000},
}
cfg["rc_room_creation"] = {"per_second": 1000, "burst_count": 1000}
# rc_message is deliberately left at Synapse's default (0.2/s, burst 10).
with open("homeserver.yaml", "w") as f:
    yaml.safe_dump(cfg, f)
EOF

"$py" -m synapse.app.homeserver -c homeserver.yaml >synapse.out 2>&1 &
synapse_pid=$!
stop() {
  kill "$synapse_pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$synapse_pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "$synapse_pid" 2>/dev/null || true
}
cleanup() {
  stop
  cd /
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 0' TERM INT

base="http://127.0.0.1:$port"
ready=0
for _ in $(seq 1 600); do  # up to 2 minutes on a loaded machine
  if curl -fsS "$base/_matrix/client/versions" >/dev/null 2>&1; then
    ready=1
    break
  fi
  if ! kill -0 "$synapse_pid" 2>/dev/null; then
    break
  fi
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  echo "synapse.sh: Synapse did not start; its output:" >&2
  tail -n 40 synapse.out >&2 || true
  exit 1
fi

for spec in "$@"; do
  IFS=: read -r user password admin <<<"$spec"
  flag=--no-admin
  [ "${admin:-}" = admin ] && flag=--admin
  "$venv/bin/register_new_matrix_user" -c homeserver.yaml -u "$user" -p "$password" \
    "$flag" "$base" >/dev/null
done

echo "READY $base"
# Bounded by the life of the test binary.
while kill -0 "$watch_pid" 2>/dev/null && kill -0 "$synapse_pid" 2>/dev/null; do
  sleep 1
done
