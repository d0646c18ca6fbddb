#!/usr/bin/env bash
# A real Prometheus scrapes metrics_demo_server: proves the text format parses (no scrape error) and
# that factlens_requests_total moves between two queries.
#
#   tests/server/prometheus_scrape_test.sh path/to/metrics_demo_server
#
# Needs `prometheus` (Debian 2.42), curl and /usr/bin/python3 (a missing one is a failure, not a
# skip). Gives up after ~40 s. Exits 0 on success, non-zero with a "FAIL: ..." line otherwise.
set -euo pipefail

DEMO=${1:?usage: $0 path/to/metrics_demo_server}
PYTHON=/usr/bin/python3
DEADLINE=$((SECONDS + 40))

fail() {
  echo "FAIL: $*" >&2
  if [[ -n ${WORK:-} && -f $WORK/prometheus.log ]]; then
    echo "---- last lines of prometheus.log ----" >&2
    tail -n 20 "$WORK/prometheus.log" >&2
  fi
  if [[ -n ${WORK:-} && -f $WORK/demo.log ]]; then
    echo "---- demo.log ----" >&2
    tail -n 20 "$WORK/demo.log" >&2
  fi
  exit 1
}

for tool in prometheus curl "$PYTHON"; do
  command -v "$tool" >/dev/null || fail "$tool not found"
done
[[ -x $DEMO ]] || fail "$DEMO is not an executable"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/factlens-prom.XXXXXX")
DEMO_PID=""
PROM_PID=""
cleanup() {
  local rc=$?
  for pid in $PROM_PID $DEMO_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $PROM_PID $DEMO_PID; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# 1. The demo server on a free loopback port (it picks one and writes it down).
"$DEMO" --address=127.0.0.1:0 --port_file="$WORK/port" --max_seconds=90 >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
until [[ -s $WORK/port ]]; do
  kill -0 "$DEMO_PID" 2>/dev/null || fail "metrics_demo_server exited early"
  ((SECONDS < DEADLINE)) || fail "metrics_demo_server did not report its port"
  sleep 0.1
done
DEMO_PORT=$(<"$WORK/port")
echo "metrics_demo_server listening on 127.0.0.1:$DEMO_PORT (pid $DEMO_PID)"
curl -fsS "http://127.0.0.1:$DEMO_PORT/metrics" >"$WORK/first_scrape.txt" ||
  fail "GET /metrics on the demo server failed"

# 2. Prometheus scraping it every second.
PROM_PORT=$(free_port)
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: factlens
    static_configs:
      - targets: ['127.0.0.1:$DEMO_PORT']
EOF
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
echo "prometheus on 127.0.0.1:$PROM_PORT (pid $PROM_PID)"
API="http://127.0.0.1:$PROM_PORT/api/v1"

until curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1; do
  kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited early"
  ((SECONDS < DEADLINE)) || fail "prometheus not ready in time"
  sleep 0.5
done

# 3. The target is up, scraped, and without scrape error (a format mistake shows up here).
# Prints "up", "error <message>", or "pending".
target_state() {
  curl -fsS "$API/targets" | "$PYTHON" -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
if not targets:
    print("pending"); sys.exit()
t = targets[0]
if t.get("lastError"):
    print("error", t["lastError"])
elif t.get("health") == "up" and not t.get("lastScrape", "").startswith("0001-"):
    print("up")
else:
    print("pending", t.get("health"))
'
}
while true; do
  state=$(target_state || echo "pending (api)")
  case $state in
    up) break ;;
    error*) fail "scrape error reported by Prometheus: ${state#error }" ;;
  esac
  kill -0 "$PROM_PID" 2>/dev/null || fail "prometheus exited"
  kill -0 "$DEMO_PID" 2>/dev/null || fail "metrics_demo_server exited"
  ((SECONDS < DEADLINE)) || fail "target not up in time (last state: $state)"
  sleep 1
done
echo "target up, lastError empty"

# Value of an instant query with exactly one series, or "none".
query_value() {
  curl -fsS --get "$API/query" --data-urlencode "query=$1" | "$PYTHON" -c '
import json, sys
result = json.load(sys.stdin)["data"]["result"]
print(result[0]["value"][1] if len(result) == 1 else "none")
'
}

up=$(query_value 'up{job="factlens"}')
[[ $up == 1 ]] || fail "up{job=\"factlens\"} = $up, want 1"
echo "up = 1"

COUNTER='factlens_requests_total{rpc="LocateFact",model="gpt2-facts-tiny",code="OK"}'
first=none
until [[ $first != none ]]; do
  first=$(query_value "$COUNTER")
  ((SECONDS < DEADLINE)) || fail "$COUNTER never appeared"
  [[ $first != none ]] || sleep 1
done
sleep 3
second=$(query_value "$COUNTER")
"$PYTHON" -c "import sys; sys.exit(0 if float('$second') > float('$first') else 1)" ||
  fail "factlens_requests_total did not move: $first then $second"
echo "factlens_requests_total moved: $first -> $second"

# Every ServerMetrics family with samples made it through, escaped label values included.
names=$(curl -fsS --get "$API/query" --data-urlencode 'query={__name__=~"factlens_.*"}' |
  "$PYTHON" -c '
import json, sys
print(" ".join(sorted({r["metric"]["__name__"] for r in json.load(sys.stdin)["data"]["result"]})))
')
for want in factlens_requests_total factlens_request_duration_seconds_bucket \
  factlens_request_duration_seconds_sum factlens_request_duration_seconds_count \
  factlens_queue_wait_seconds_bucket factlens_requests_in_flight factlens_model_load_seconds \
  factlens_model_resident_bytes factlens_model_ready factlens_build_info; do
  [[ " $names " == *" $want "* ]] || fail "$want missing from Prometheus (has: $names)"
done
escaped=$(query_value 'factlens_requests_total{rpc="Locate\"Fact\\",model="odd\nmodel"}')
[[ $escaped == 1 ]] || fail "series with escaped label values: got $escaped, want 1"
echo "all families present, escaped label values round-trip"

if ((SECONDS > DEADLINE)); then
  fail "took longer than the 40 s budget"
fi
echo "PASS: Prometheus scraped metrics_demo_server without error (${SECONDS}s)"
