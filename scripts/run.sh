#!/usr/bin/env bash
# `make run`: starts the whole platform in one process (`pension all`), waits until it is ready, prints where to
# open it, and keeps running until Ctrl-C.
set -euo pipefail

binary=${PENSION_BIN:?PENSION_BIN names the pension binary}
http_port=8080
mkdir -p .run
# A development admin token for the registry import page and API, made once and kept beside the logs.
if [ ! -s .run/admin-token ]; then
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > .run/admin-token
  chmod 600 .run/admin-token
fi
export PENSION__GATEWAY__ADMIN_TOKEN="$(cat .run/admin-token)"
"$binary" all > >(tee .run/pension.log) 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM

for _ in $(seq 1 600); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "pension stopped during start-up; see .run/pension.log" >&2
    wait "$pid"
    exit 1
  fi
  if curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.5
done

# The demo registry, so that a key can be applied for at once; loading it again changes nothing.
"$binary" agencies import demo/agencies.csv
"$binary" registry import demo/registry.csv

cat <<MSG

  The platform is running (all services in one process; logs in .run/pension.log).

    Home page        http://127.0.0.1:$http_port/
    Readiness        http://127.0.0.1:$http_port/readyz
    Platform status  http://127.0.0.1:$http_port/api/status
    OpenAPI          http://127.0.0.1:$http_port/api/openapi.json
    Metrics          http://127.0.0.1:$http_port/metrics
    Key application  http://127.0.0.1:$http_port/keys/apply  (try 双鸭山市财政局, 机关)
    Registry import  http://127.0.0.1:$http_port/admin/registry  (admin token: $PENSION__GATEWAY__ADMIN_TOKEN)
    Operator gRPC    127.0.0.1:50051  (grpcurl -plaintext 127.0.0.1:50051 list)

  Press Ctrl-C to stop.

MSG
wait "$pid"
