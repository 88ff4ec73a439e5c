#!/usr/bin/env bash
# `make run`: starts the whole platform in one process (`pension all`), waits until it is ready, prints where to
# open it, and keeps running until Ctrl-C.
set -euo pipefail

binary=${PENSION_BIN:?PENSION_BIN names the pension binary}
# Where the CA, the demo accounts and the log go, and the two ports: a second platform (the journey test) runs
# beside a developer's own with other values.
run_dir=${PENSION_RUN_DIR:-.run}
http_port=${PENSION_HTTP_PORT:-8080}
https_port=${PENSION_HTTPS_PORT:-8443}
agency_port=${PENSION_AGENCY_PORT:-50443}
export PENSION__GATEWAY__AGENCY_GRPC_ADDR="${PENSION__GATEWAY__AGENCY_GRPC_ADDR:-0.0.0.0:$agency_port}"
export PENSION__GATEWAY__HTTP_ADDR="${PENSION__GATEWAY__HTTP_ADDR:-0.0.0.0:$http_port}"
export PENSION__GATEWAY__HTTPS_ADDR="${PENSION__GATEWAY__HTTPS_ADDR:-0.0.0.0:$https_port}"
# The QR codes on the printed forms open this platform's verification page.
export PENSION__PRINTING__VERIFY_URL="${PENSION__PRINTING__VERIFY_URL:-http://127.0.0.1:$http_port/verify}"
mkdir -p "$run_dir"
# A development admin token for the registry import page and API, made once and kept beside the logs.
if [ ! -s "$run_dir/admin-token" ]; then
  head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run_dir/admin-token"
  chmod 600 "$run_dir/admin-token"
fi
export PENSION__GATEWAY__ADMIN_TOKEN="$(cat "$run_dir/admin-token")"
# A development CA, made once: its root signs the demo certificates and the gateway's 8443 certificate.
if [ ! -s "$run_dir/ca/ca.key" ]; then
  # A new CA: the accounts and certificates an earlier demo left in the local databases were made under another
  # one and cannot log in, so the demo starts from empty databases (only the local default ones, never configured).
  if ! env | grep -q '^PENSION__.*DATABASE__URL='; then
    for database in pension_identity pension_units pension_personnel pension_printing pension_population; do
      psql -q -h 127.0.0.1 -U postgres -d postgres -c "drop database if exists $database with (force)" >/dev/null
    done
  fi
  rm -f "$run_dir/demo.json"
  "$binary" ca init --dir "$run_dir/ca"
fi
run_dir=$(cd "$run_dir" && pwd)
export PENSION__IDENTITY__CA__CERTIFICATE_FILE="$run_dir/ca/ca.crt"
export PENSION__IDENTITY__CA__KEY_FILE="$run_dir/ca/ca.key"
export PENSION__GATEWAY__TLS_CERTIFICATE_FILE="$run_dir/ca/server.crt"
export PENSION__GATEWAY__TLS_KEY_FILE="$run_dir/ca/server.key"
# The development population registry (公安库 stand-in) on 127.0.0.1:50070, knowing most of the demo unit's people.
export PENSION__POPULATION__ENABLED=true
export PENSION__POPULATION__FILE="$PWD/demo/population.csv"
"$binary" all > >(tee "$run_dir/pension.log") 2>&1 &
pid=$!
# Stopped with Ctrl-C, or by a failing step below: the platform stops with it.
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM EXIT

for _ in $(seq 1 600); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "pension stopped during start-up; see $run_dir/pension.log" >&2
    wait "$pid"
    exit 1
  fi
  if curl -fsS "http://127.0.0.1:$http_port/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.5
done

# The demo registry, so that a key can be applied for at once; loading it again changes nothing.
"$binary" agencies import demo/agencies.csv
"$binary" registry import demo/registry.csv
# The demo accounts (once): a unit whose key the CA made, an agency reviewer, a CA operator, a province admin; and
# the demo unit's record, a dozen staff and a few retirees (whenever the unit has no people).
"$binary" demo seed --out "$run_dir"
account() { # role field
  python3 -c 'import json,sys; a=[x for x in json.load(open(sys.argv[3]))["accounts"] if x["role"]==sys.argv[1]][0]; print(a[sys.argv[2]])' "$1" "$2" "$run_dir/demo.json"
}
unit_user=$(account unit_operator username)
unit_password=$(account unit_operator password)
unit_cert=$(account unit_operator certificate)
unit_key=$(account unit_operator key)
unit_p12=$(account unit_operator pkcs12)
unit_p12_password=$(account unit_operator pkcs12_password)

cat <<MSG

  The platform is running (all services in one process; logs in $run_dir/pension.log).

    Home page        http://127.0.0.1:$http_port/
    Readiness        http://127.0.0.1:$http_port/readyz
    Platform status  http://127.0.0.1:$http_port/api/status
    OpenAPI          http://127.0.0.1:$http_port/api/openapi.json
    Metrics          http://127.0.0.1:$http_port/metrics
    Key application  http://127.0.0.1:$http_port/keys/apply  (try 双鸭山市财政局, 机关)
    Registry import  http://127.0.0.1:$http_port/admin/registry  (admin token: $PENSION__GATEWAY__ADMIN_TOKEN)
    CA certificate   http://127.0.0.1:$http_port/ca/ca.crt   CRL  http://127.0.0.1:$http_port/ca/crl
    Operator gRPC    127.0.0.1:50051  (grpcurl -plaintext 127.0.0.1:50051 list)
    Agency gRPC      127.0.0.1:$agency_port  (mutual TLS, pension.agency.v1; docs/agency-api.md). As the demo agency:
      grpcurl -cacert $run_dir/ca/ca.crt -cert $run_dir/demo/demo-agency.crt -key $run_dir/demo/demo-agency.key \\
        -d '{"id_number": "230502198001011238"}' 127.0.0.1:$agency_port pension.agency.v1.AgencyApi/GetPersonEnrollment

  Log in (https://127.0.0.1:$https_port/login) with a certificate and a password. Demo accounts, with their
  certificates, keys and PKCS#12 files, are listed in $run_dir/demo.json:
    unit operator    $unit_user / $unit_password
    agency reviewer  reviewer / $(account agency_reviewer password)
    CA operator      ca.operator / $(account ca_operator password)
    province admin   province.admin / $(account province_admin password)  (API clients: /admin/api-clients)

  After logging in, the unit operator finds its record at https://127.0.0.1:$https_port/unit, its people
  (待办业务: staff and both kinds of retirees) at https://127.0.0.1:$https_port/persons, and declares at
  https://127.0.0.1:$https_port/declaration; the agency reviewer reviews at https://127.0.0.1:$https_port/review.
  Many people at once: https://127.0.0.1:$https_port/persons/import (xlsx template, upload, report). After
  approval, people join, leave, retire and are corrected at https://127.0.0.1:$https_port/changes.
  Enrollment progress (参保进度: funnel, regions, people per day and hour, the review queue, the live load) for the
  province admin and the agency reviewer: https://127.0.0.1:$https_port/dashboard.

  From the command line (the JSON API):
    curl --cacert $run_dir/ca/ca.crt --cert $unit_cert --key $unit_key \\
      -H 'Content-Type: application/json' -d '{"username":"$unit_user","password":"$unit_password"}' \\
      https://127.0.0.1:$https_port/api/session

  In a browser: import $unit_p12 (password $unit_p12_password) as a personal certificate and
  $run_dir/ca/ca.crt as a trusted authority (Chrome: Settings → Privacy and security → Security → Manage
  certificates; Firefox: Settings → Privacy & Security → Certificates → View Certificates → Your Certificates →
  Import), then open https://127.0.0.1:$https_port/login and choose the certificate when asked.

  Press Ctrl-C to stop.

MSG
wait "$pid"
