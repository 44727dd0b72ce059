#!/bin/sh
# Redis + Sentinel bootstrap, run by the `config` init container of every redis-N pod.
#
# Writes /conf/redis.conf and /data/sentinel/sentinel.conf, choosing the master as:
#   1. the master a peer's Sentinel reports (normal case, also after a failover);
#   2. else the master this pod's Sentinel last knew (kept on its volume: full-cluster restart);
#   3. else pod 0 (first start).
# Flotilla does not speak the Sentinel protocol; it connects to the `redis` Service (HAProxy),
# which forwards to whichever pod reports role:master.
set -eu

: "${REDIS_PASSWORD:?REDIS_PASSWORD is not set (Secret redis-auth, key password)}"
: "${POD_NAMESPACE:?}"
SET="${SENTINEL_MASTER_SET:-flotilla}"
STS="${STATEFULSET_NAME:-redis}"
REPLICAS="${REPLICAS:-3}"
QUORUM="${SENTINEL_QUORUM:-2}"
DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
HEADLESS="${STS}-headless.${POD_NAMESPACE}.svc.${DOMAIN}"
SELF="$(hostname).${HEADLESS}"
SENTINEL_DIR=/data/sentinel
SENTINEL_CONF="${SENTINEL_DIR}/sentinel.conf"
export REDISCLI_AUTH="$REDIS_PASSWORD"

log() { echo "redis-init: $*" >&2; }

master=""
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  peer="${STS}-${i}.${HEADLESS}"
  i=$((i + 1))
  [ "$peer" = "$SELF" ] && continue
  out="$(timeout 3 redis-cli --no-auth-warning --raw -h "$peer" -p 26379 \
    sentinel get-master-addr-by-name "$SET" 2>/dev/null || true)"
  host="$(printf '%s\n' "$out" | sed -n 1p)"
  port="$(printf '%s\n' "$out" | sed -n 2p)"
  case "$port" in '' | *[!0-9]*) continue ;; esac
  master="$host"
  log "sentinel on $peer reports master $master"
  break
done

if [ -z "$master" ] && [ -f "$SENTINEL_CONF" ]; then
  master="$(sed -n "s/^sentinel monitor ${SET} \([^ ]*\) .*/\1/p" "$SENTINEL_CONF" | head -n 1)"
  [ -n "$master" ] && log "no peer sentinel answered; last known master $master"
fi

if [ -z "$master" ]; then
  master="${STS}-0.${HEADLESS}"
  log "first start: master is $master"
fi

mkdir -p /conf "$SENTINEL_DIR"

cat > /conf/redis.conf <<CONF
bind * -::*
port 6379
protected-mode no
dir /data
requirepass "${REDIS_PASSWORD}"
masterauth "${REDIS_PASSWORD}"
replica-announce-ip ${SELF}
# Flotilla's guarantees: keep what was acknowledged, never evict.
appendonly yes
appendfsync always
aof-use-rdb-preamble yes
maxmemory-policy noeviction
# Leave headroom below the container's memory limit: writes fail with an OOM error
# (Flotilla answers 503 / retries) instead of the pod being OOM-killed.
maxmemory ${REDIS_MAXMEMORY:-1536mb}
# An isolated (demoted) master refuses writes instead of accepting ones that a failover loses.
min-replicas-to-write 1
min-replicas-max-lag 10
CONF
if [ "$master" != "$SELF" ]; then
  echo "replicaof ${master} 6379" >> /conf/redis.conf
  log "this pod ($SELF) is a replica of $master"
else
  log "this pod ($SELF) is the master"
fi

# Regenerated on every start from the master chosen above; Sentinel rewrites it at run time.
cat > "$SENTINEL_CONF" <<CONF
port 26379
protected-mode no
requirepass "${REDIS_PASSWORD}"
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip ${SELF}
sentinel monitor ${SET} ${master} 6379 ${QUORUM}
sentinel auth-pass ${SET} "${REDIS_PASSWORD}"
sentinel down-after-milliseconds ${SET} 5000
sentinel failover-timeout ${SET} 60000
sentinel parallel-syncs ${SET} 1
CONF
