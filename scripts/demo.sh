#!/usr/bin/env bash
# `make demo`: the main job. Starts a producer, two workers and a webhook receiver as separate
# processes, runs the bundled real data through the fleet (2000 UCI review sentences with
# `sentiment`, 2000 Tatoeba sentences with `langid`), prints both summaries, writes them to
# target/flotilla-demo.json, and shuts everything down cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh

cargo build --workspace --locked --quiet
BIN=target/debug
OUT=target/demo
mkdir -p "$OUT"

export FLOTILLA_CONFIG="${FLOTILLA_CONFIG:-config/flotilla.toml}"
export FLOTILLA_NAMESPACE="${FLOTILLA_NAMESPACE:-flotilla-demo}"
export FLOTILLA_API_KEY="${FLOTILLA_API_KEY:-demo-key}"
# The demo tenant's secret from config/flotilla.toml, for the receiver to verify with.
export FLOTILLA_WEBHOOK_SECRET="${FLOTILLA_WEBHOOK_SECRET:-$(sed -n 's/^webhook_secret = "\(whsec_[^"]*\)"/\1/p' "$FLOTILLA_CONFIG" | head -1)}"
API_ADDR="${FLOTILLA_DEMO_API:-127.0.0.1:8080}"
RECEIVER_ADDR="${FLOTILLA_DEMO_RECEIVER:-127.0.0.1:8099}"
WORKER_ADDRS=("${FLOTILLA_DEMO_WORKER1:-127.0.0.1:9091}" "${FLOTILLA_DEMO_WORKER2:-127.0.0.1:9092}")
export FLOTILLA_URL="http://$API_ADDR"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# A port already taken by another process would make a readiness check talk to that process.
for hp in "$API_ADDR" "$RECEIVER_ADDR" "${WORKER_ADDRS[@]}"; do
  if timeout 1 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:}" 2>/dev/null; then
    echo "demo: $hp is already in use; set FLOTILLA_DEMO_API, FLOTILLA_DEMO_RECEIVER, FLOTILLA_DEMO_WORKER1/2" >&2
    exit 1
  fi
done

http_ok() { # host:port path → 0 when the answer is 200
  local hp="$1" path="$2"
  timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:} && printf 'GET $path HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && head -1 <&3" 2>/dev/null | grep -q ' 200'
}
wait_ready() { # name host:port path log
  for _ in $(seq 1 150); do
    http_ok "$2" "$3" && return 0
    sleep 0.2
  done
  echo "demo: $1 did not become ready; its log ($4):" >&2
  tail -20 "$4" >&2
  exit 1
}

"$BIN/flotilla" receiver --listen "$RECEIVER_ADDR" >"$OUT/receiver.log" 2>&1 &
pids+=($!)
"$BIN/flotilla-producer" --listen "$API_ADDR" >"$OUT/producer.log" 2>&1 &
pids+=($!)
for i in 1 2; do
  "$BIN/flotilla-worker" --admin-addr "${WORKER_ADDRS[$((i - 1))]}" --worker-id "demo-worker-$i" >"$OUT/worker-$i.log" 2>&1 &
  pids+=($!)
done
wait_ready receiver "$RECEIVER_ADDR" /healthz "$OUT/receiver.log"
wait_ready producer "$API_ADDR" /readyz "$OUT/producer.log"
wait_ready worker-1 "${WORKER_ADDRS[0]}" /readyz "$OUT/worker-1.log"
wait_ready worker-2 "${WORKER_ADDRS[1]}" /readyz "$OUT/worker-2.log"
echo "demo: producer, 2 workers and a webhook receiver are up (logs in $OUT/)"

status=0
echo
echo "== sentiment: 2000 UCI review sentences (amazon + yelp), VADER"
"$BIN/flotilla" run data/sentiment/amazon_cells_labelled.txt data/sentiment/yelp_labelled.txt \
  --model sentiment --receiver "http://$RECEIVER_ADDR" --output "$OUT/sentiment.json" || status=1
echo
echo "== langid: 2000 Tatoeba sentences, lingua over 9 languages (Galician has no model)"
"$BIN/flotilla" run data/langid/testset.csv \
  --model langid --unsupported-label glg --receiver "http://$RECEIVER_ADDR" --output "$OUT/langid.json" || status=1

if [ -s "$OUT/sentiment.json" ] && [ -s "$OUT/langid.json" ]; then
  { printf '{"sentiment": '; cat "$OUT/sentiment.json"; printf ', "langid": '; cat "$OUT/langid.json"; printf '}\n'; } \
    > target/flotilla-demo.json
  echo
  echo "demo: summaries written to target/flotilla-demo.json"
fi

http_get() { # host:port path → the body
  timeout 5 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:} && printf 'GET $2 HTTP/1.0\r\nHost: x\r\n\r\n' >&3 && cat <&3" 2>/dev/null |
    sed '1,/^\r\{0,1\}$/d'
}
echo
echo "== metrics: each process's /metrics after the runs"
http_get "$API_ADDR" /metrics | grep -E '^flotilla_jobs_submitted_total' | sed 's/^/  producer  /'
for i in 1 2; do
  http_get "${WORKER_ADDRS[$((i - 1))]}" /metrics |
    grep -E '^flotilla_(jobs_completed_total|webhook_deliveries_total|drift_psi|job_end_to_end_seconds_count)' |
    sed "s/^/  worker-$i  /"
done

echo
echo "== one job's trace, from the API to its webhook"
job_json=$("$BIN/flotilla" submit --model sentiment --input '{"text": "Tracing works, lovely."}' \
  --webhook "http://$RECEIVER_ADDR/webhooks" --wait 2>/dev/null || true)
job_id=$(printf '%s' "$job_json" | grep -o '"id": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
trace_id=$(printf '%s' "$job_json" | grep -o '"trace_id": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/')
if [ -n "$trace_id" ]; then
  echo "  job $job_id  trace_id $trace_id"
  for _ in $(seq 1 50); do
    tp=$(http_get "$RECEIVER_ADDR" "/events/$job_id" | grep -o '"traceparent":"[^"]*"' | head -1 | cut -d'"' -f4)
    [ -n "$tp" ] && break
    sleep 0.1
  done
  echo "  API:     $(grep -h "trace_id=$trace_id" "$OUT/producer.log" | head -1 | cut -c1-150)"
  echo "  worker:  $(grep -h "trace_id=$trace_id" "$OUT"/worker-*.log | head -1 | cut -c1-150)"
  echo "  webhook: traceparent ${tp:-<not received>}"
else
  echo "  demo: the traced job did not finish" >&2
  status=1
fi

cleanup
trap - EXIT
echo "demo: fleet shut down"
exit "$status"
