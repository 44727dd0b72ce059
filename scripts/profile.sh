#!/usr/bin/env bash
# Instruction profile of the hot path (valgrind's callgrind counts instructions, which repeat
# run to run whatever else the machine does, unlike seconds).
#
#   scripts/profile.sh [JOBS] [single|batch]
#
# Starts the release producer and one release worker, both under callgrind, in a namespace of
# their own; submits JOBS (default 3000) zero-latency `sim` jobs, without webhooks, through
# curl with the API key and idempotency keys (`single`: one POST /v1/jobs per job; `batch`:
# POST /v1/jobs/batch of 100), with no worker running; stops the producer; starts the worker,
# which empties the queue; stops it; then prints each process's instructions per job (after subtracting
# the same process's start-up and shutdown, measured by an idle run) and its 25 costliest
# functions. Output files stay in target/profile/. Needs `make services` and a
# release build (`cargo build --release -p flotilla-producer -p flotilla-worker`).
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS="${1:-3000}"
MODE="${2:-single}"
BIN=target/release
OUT=target/profile
NS="prof-$(date +%s)-$$"
KEY="prof-key-$$"
rm -rf "$OUT" && mkdir -p "$OUT"

for b in flotilla flotilla-producer flotilla-worker; do
  [ -x "$BIN/$b" ] || { echo "profile: $BIN/$b missing; cargo build --release first" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "profile: valgrind is not installed" >&2; exit 1; }

HASH=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
cat >"$OUT/flotilla.toml" <<EOF
[models.sim]
enabled = true
latency_ms = 0

[[tenants]]
name = "prof"
api_key_sha256 = ["$HASH"]
EOF
for i in $(seq 1 "$JOBS"); do printf '{"n": %d}\n' "$i"; done >"$OUT/jobs.jsonl"

export FLOTILLA_CONFIG="$OUT/flotilla.toml" FLOTILLA_NAMESPACE="$NS" NO_COLOR=1
unset RUST_LOG
API=127.0.0.1:18787
ADMIN=127.0.0.1:18788

cg() { # name, then the command
  local name="$1"; shift
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.cg" "$@" >"$OUT/$name.log" 2>&1 &
  echo $!
}
ready() { # url
  for _ in $(seq 1 600); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "profile: $1 did not become ready" >&2
  return 1
}
stop() { # pid (not this shell's child: cg runs in a command substitution)
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  echo "profile: process $1 did not exit" >&2
  return 1
}
cleanup() {
  # Queues through rabbitmqctl (this broker may have no management API); keys by pattern.
  rabbitmqctl -q list_queues name 2>/dev/null | grep "^$NS\." |
    xargs -r -n1 rabbitmqctl -q delete_queue >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$NS:*" 2>/dev/null | xargs -r redis-cli del >/dev/null 2>&1 || true
}
trap cleanup EXIT

succeeded() { # job records that ended succeeded
  redis-cli --scan --pattern "$NS:job:*" | sed 's/^/HGET /; s/$/ status/' | redis-cli |
    grep -c '^succeeded$' || true
}

# Start-up and shutdown alone, to subtract.
P=$(cg producer-idle "$BIN/flotilla-producer" --listen "$API")
ready "http://$API/readyz"
stop "$P"
W=$(cg worker-idle "$BIN/flotilla-worker" --admin-addr "$ADMIN" --worker-id prof-idle --grace-s 5)
ready "http://$ADMIN/readyz"
stop "$W"

# The producer alone takes the submissions (curl, so that no client polls it).
P=$(cg producer-work "$BIN/flotilla-producer" --listen "$API")
ready "http://$API/readyz"
mkdir -p "$OUT/req"
if [ "$MODE" = batch ]; then
  split -l 100 -d -a 4 "$OUT/jobs.jsonl" "$OUT/req/b"
  for f in "$OUT"/req/b*; do
    { printf '{"jobs": ['; sed -E 's/^\{"n": ([0-9]+)\}$/{"model": "sim", "input": {"n": \1}, "params": {"latency_ms": 0}, "idempotency_key": "p-\1"}/' "$f" | paste -sd, -; printf ']}'; } >"$f.json"
  done
  ls "$OUT"/req/b*.json | xargs -P 4 -I{} curl -sf -o /dev/null -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' --data-binary @{} "http://$API/v1/jobs/batch"
else
  seq 1 "$JOBS" | xargs -P 8 -I{} curl -sf -o /dev/null -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -H 'Idempotency-Key: p-{}' \
    --data '{"model": "sim", "input": {"n": {}}, "params": {"latency_ms": 0}}' "http://$API/v1/jobs"
fi
stop "$P"
queued=$(grep -c 'job accepted' "$OUT/producer-work.log" || true)
[ "$queued" = "$JOBS" ] || { echo "profile: $queued of $JOBS jobs accepted" >&2; exit 1; }

# One worker empties the queue.
W=$(cg worker-work "$BIN/flotilla-worker" --admin-addr "$ADMIN" --worker-id prof-work --grace-s 5)
for _ in $(seq 1 1200); do
  [ "$(succeeded)" = "$JOBS" ] && break
  sleep 0.5
done
stop "$W"
echo "== $(succeeded) of $JOBS jobs succeeded ($MODE submits)"

total() { grep -m1 -E '^(summary|totals):' "$1" | awk '{print $2}'; }
for proc in producer worker; do
  idle=$(total "$OUT/$proc-idle.cg")
  work=$(total "$OUT/$proc-work.cg")
  echo "== $proc: $(( (work - idle) / JOBS )) instructions per job ($work in the run, $idle idle)"
  echo "  inclusive, Flotilla's own functions and the libraries on the hot path:"
  callgrind_annotate --inclusive=yes "$OUT/$proc-work.cg" 2>/dev/null |
    grep -E '^ *[0-9,]+ \(' | grep -E 'flotilla_|redis::|lapin::|amq_protocol|combine::stream|serde_json::(de|ser)::|tracing_subscriber::fmt|hyper::proto::h1::role|sha2' |
    sed -n 1,20p | sed -E 's/ \[[^]]*\]$//; s/^/    /' | cut -c1-190 || true
  echo "  self cost:"
  callgrind_annotate "$OUT/$proc-work.cg" 2>/dev/null |
    grep -E '^ *[0-9,]+ \(' | sed -n 2,13p | sed -E 's/ \[[^]]*\]$//; s/^/    /' | cut -c1-190 || true
done
