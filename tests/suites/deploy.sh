#!/usr/bin/env bash
# Checks the deployment files of deploy/ on a machine without a container engine
# (docs/deploy.md, "How the deploy files are checked"):
#   - nginx: `nginx -t` on deploy/nginx/nginx.conf with the very relais.conf snippet (only the
#     upstream host names, which exist only on the compose network, become 127.0.0.1), then
#     a live run: a real relais behind that nginx, an event stream read through it;
#   - the Dockerfile, compose.yaml and the Kubernetes manifests: schema validators and
#     consistency checks (tests/deploy/check_deploy.py);
#   - the image's dependency-caching layer: the stand-in targets satisfy Cargo;
#   - the systemd unit: `systemd-analyze verify` and `systemd-analyze security`.
# Needs what tests/setup/install-deps.sh installs (nginx, the venv with the validators).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

VENV=${RELAIS_DEPLOY_VENV:-$HOME/.cache/relais-test/deploy-venv}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WORK=$(mktemp -d)
# The live check runs in a subshell: its processes are stopped through their pid files.
stop_live() {
  local f
  for f in curl nginx relais; do
    [ -f "$WORK/$f.pid" ] && { kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true; }
    rm -f "$WORK/$f.pid"
  done
  return 0
}
cleanup() {
  stop_live
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
# check NAME COMMAND...: runs one check, its output indented; failures are counted.
check() {
  local name=$1
  shift
  echo "-- $name"
  local rc
  set +e
  (
    set -e
    "$@"
  ) >"$WORK/out" 2>&1
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    sed 's/^/   /' "$WORK/out"
    echo "ok $name"
    passed=$((passed + 1))
  else
    sed 's/^/   /' "$WORK/out"
    echo "FAILED $name"
    failed=$((failed + 1))
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for FILE PATTERN SECONDS: waits until FILE has a line matching PATTERN.
wait_for() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out after $3 s waiting for '$2' in $1:"
  cat "$1" 2>/dev/null || true
  echo
  return 1
}

# render_nginx DIR [PORT]: the compose nginx config in DIR, relais.conf and nginx.conf copied
# unchanged; in relais-upstream.conf every `server host:port` becomes 127.0.0.1 (and PORT
# when given). With PORT, nginx.conf listens on 127.0.0.1:$NGINX_PORT instead of :80.
render_nginx() {
  local dir=$1 port=${2:-}
  mkdir -p "$dir"
  cp deploy/nginx/nginx.conf deploy/nginx/relais.conf deploy/nginx/relais-log.conf "$dir/"
  if [ -n "$port" ]; then
    sed -E "s/^([[:space:]]*server[[:space:]]+)[^[:space:];]+:[0-9]+/\\1127.0.0.1:$port/" \
      deploy/nginx/relais-upstream.conf >"$dir/relais-upstream.conf"
    sed -i -E "s/^([[:space:]]*listen[[:space:]]+)80;/\\1127.0.0.1:$NGINX_PORT;/; /listen[[:space:]]+\[::\]:80;/d" \
      "$dir/nginx.conf"
  else
    sed -E 's/^([[:space:]]*server[[:space:]]+)[^[:space:];]+:/\1127.0.0.1:/' \
      deploy/nginx/relais-upstream.conf >"$dir/relais-upstream.conf"
  fi
}

nginx_syntax() {
  local dir=$WORK/nginx-t
  render_nginx "$dir"
  # Only the host names may differ from the committed files.
  diff deploy/nginx/relais-upstream.conf "$dir/relais-upstream.conf" | grep '^[<>]' | grep -v -E '^[<>][[:space:]]*server ' && return 1
  "$NGINX" -t -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g "pid $dir/nginx.pid;"
}

relais_bin() {
  if [ ! -x target/debug/relais ]; then
    cargo build --locked --quiet --bin relais
  fi
  echo "$ROOT/target/debug/relais"
}

# A real relais behind the real snippet: the stream opens through nginx and its preamble and
# an event published through nginx reach the client while the stream stays open; webhook
# bodies over 1 MiB and /metrics are refused by nginx. (relais also sends
# X-Accel-Buffering: no, so the buffering directives themselves are checked statically by
# check_deploy.py.)
nginx_live_sse() {
  local bin relais_port dir tok body code
  bin=$(relais_bin)
  relais_port=$(free_port)
  NGINX_PORT=$(free_port)
  dir=$WORK/nginx-live
  render_nginx "$dir" "$relais_port"
  export RELAIS_JWT__SECRET=deploy-suite-secret-0123456789abcdef
  RELAIS_SERVER__LISTEN=127.0.0.1:$relais_port RELAIS_SERVER__STATE_DIR=$WORK/state \
    "$bin" serve >"$WORK/relais.log" 2>&1 &
  echo "$!" >"$WORK/relais.pid"
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
    -g "pid $dir/nginx.pid; daemon off;" >"$WORK/nginx.log" 2>&1 &
  echo "$!" >"$WORK/nginx.pid"
  local base=http://127.0.0.1:$NGINX_PORT
  local i
  for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break
    sleep 0.1
  done
  curl -fsS -o /dev/null "$base/healthz" || { cat "$WORK/relais.log" "$dir/error.log"; return 1; }
  echo "relais on :$relais_port behind nginx on :$NGINX_PORT"

  tok=$("$bin" token --sub deploy-suite --subscribe deploy/live --publish deploy/live --ttl 10m)
  curl -sN --max-time 20 -H "Authorization: Bearer $tok" \
    "$base/.well-known/mercure?topic=deploy/live" >"$WORK/stream" 2>&1 &
  echo "$!" >"$WORK/curl.pid"
  # The stream's preamble comes through at once, before any event.
  wait_for "$WORK/stream" '^retry:' 10
  code=$(curl -sS -o "$WORK/pub" -w '%{http_code}' -H "Authorization: Bearer $tok" \
    --data-urlencode topic=deploy/live --data-urlencode 'data=through nginx' \
    "$base/.well-known/mercure")
  [ "$code" = 200 ] || { echo "publish through nginx: HTTP $code"; cat "$WORK/pub"; return 1; }
  wait_for "$WORK/stream" '^data: through nginx$' 10
  echo "event received through nginx: id $(cat "$WORK/pub")"

  # Bodies over 1 MiB are refused by nginx itself; /metrics is not exposed.
  head -c 1100000 /dev/zero | tr '\0' 'a' >"$WORK/big"
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$WORK/big" "$base/hooks/grist/any")
  [ "$code" = 413 ] || { echo "2 MiB webhook through nginx: HTTP $code, expected 413"; return 1; }
  code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/metrics")
  [ "$code" = 403 ] || { echo "/metrics through nginx: HTTP $code, expected 403"; return 1; }
  echo "1.1 MB body: 413 from nginx; /metrics: 403"

  # Credentials in query strings (and in the Referer) never reach the access log.
  curl -sS -o /dev/null --max-time 2 "$base/.well-known/mercure?topic=a&authorization=LEAKED-Q1" || true
  curl -sS -o /dev/null -e "$base/widget/?token=LEAKED-Q4" "$base/widget/?token=LEAKED-Q2"
  curl -sS -o /dev/null -H 'Content-Type: application/json' -d '[]' \
    "$base/hooks/grist/any?secret=LEAKED-Q3"
  sleep 0.3
  grep -q 'GET /widget/?\[redacted\]' "$WORK/nginx.log" ||
    { echo "no redacted widget line in the access log:"; cat "$WORK/nginx.log"; return 1; }
  if grep -q 'LEAKED-Q' "$WORK/nginx.log"; then
    echo "a credential reached nginx's access log:"
    grep 'LEAKED-Q' "$WORK/nginx.log"
    return 1
  fi
  echo "access log: query strings redacted"

  # compose.yaml's nginx healthcheck command, run against this nginx.
  "$VENV/bin/python" - "$NGINX_PORT" <<'PY' || return 1
import subprocess, sys, yaml
test = yaml.safe_load(open("deploy/compose.yaml"))["services"]["nginx"]["healthcheck"]["test"]
assert test[0] == "CMD", test
cmd = [a.replace("127.0.0.1/80", "127.0.0.1/" + sys.argv[1]) for a in test[1:]]
rc = subprocess.run(cmd, timeout=10).returncode
print("compose nginx healthcheck:", "healthy" if rc == 0 else f"unhealthy (exit {rc})")
sys.exit(rc)
PY
}

validators() {
  "$VENV/bin/python" tests/deploy/check_deploy.py
}

# The Dockerfile's dependency layer builds Cargo.toml + Cargo.lock with stand-in sources:
# every target Cargo expects must get one. Cargo resolves targets before it needs the
# target directory, so an unusable target directory stops it right after that step.
cargo_stub_layer() {
  local dir=$WORK/stub
  mkdir -p "$dir"
  cp Cargo.toml Cargo.lock "$dir/"
  mkdir -p "$dir/bench" && cp bench/Cargo.toml "$dir/bench/"
  sh deploy/cargo-stub-targets.sh "$dir"
  (cd "$dir" && cargo build --release --locked --target-dir /dev/null/relais-stub-check) >"$WORK/stub.out" 2>&1 || true
  if grep -q -E "can't find|target resolution|no targets specified" "$WORK/stub.out" || ! grep -q 'os error' "$WORK/stub.out"; then
    cat "$WORK/stub.out"
    return 1
  fi
  echo "stand-ins: $(cd "$dir" && find . -name '*.rs' | sort | tr '\n' ' ')"
}

systemd_unit() {
  local root=$WORK/sysroot out
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze missing (tests/setup/install-deps.sh installs it)"
    return 1
  fi
  mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
  printf '#!/bin/sh\n' >"$root/usr/local/bin/relais"
  chmod +x "$root/usr/local/bin/relais"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  cp deploy/systemd/relais.service "$root/etc/systemd/system/"
  # verify reports bad values and unknown keys as warnings with exit 0: any output fails.
  out=$(systemd-analyze verify --man=no --root="$root" relais.service 2>&1) || { echo "$out"; return 1; }
  [ -z "$out" ] || { echo "$out"; return 1; }
  echo "systemd-analyze verify: clean"
  systemd-analyze security --offline=true --root="$root" --threshold=25 relais.service >"$WORK/security" 2>&1 ||
    { tail -40 "$WORK/security"; return 1; }
  grep 'Overall exposure level' "$WORK/security"
}

ignored_secrets() {
  local f
  for f in deploy/.env deploy/relais.env; do
    git check-ignore -q "$f" || { echo "$f is not ignored by git"; return 1; }
  done
  echo "deploy/.env and deploy/relais.env are git-ignored"
}

check "nginx -t (compose nginx.conf + relais.conf)" nginx_syntax
check "nginx in front of a real relais: live event stream" nginx_live_sse
stop_live
check "Dockerfile, compose.yaml, Kubernetes manifests (validators)" validators
check "image dependency layer (stand-in targets)" cargo_stub_layer
check "systemd unit" systemd_unit
check "local secret files are git-ignored" ignored_secrets

echo "deploy: $passed passed, $failed failed"
[ "$failed" = 0 ]
