#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on the configured URLs:
#   1. reuse them when they already answer;
#   2. else start the locally installed servers;
#   3. else, as root with apt, install Debian's rabbitmq-server and redis-server and start them;
#   4. else say what to do, and exit 1.
set -euo pipefail

AMQP_URL="${FLOTILLA_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
REDIS_URL="${FLOTILLA_REDIS_URL:-redis://127.0.0.1:6379/}"

# host and port of a URL like scheme://[user:pass@]host:port/...
host_port() {
  local rest="${1#*://}"; rest="${rest#*@}"; rest="${rest%%/*}"; rest="${rest%%\?*}"
  local host="${rest%%:*}" port="${rest##*:}"
  [ "$port" = "$rest" ] && port="$2"
  echo "$host $port"
}
read -r AMQP_HOST AMQP_PORT < <(host_port "$AMQP_URL" 5672)
read -r REDIS_HOST REDIS_PORT < <(host_port "$REDIS_URL" 6379)

say() { echo "services: $*" >&2; }

amqp_up() {
  # An AMQP server answers an unknown 8-byte protocol header with its own "AMQP" header.
  timeout 2 bash -c "exec 3<>/dev/tcp/$AMQP_HOST/$AMQP_PORT && printf 'HTTP/1.1' >&3 && head -c 4 <&3" 2>/dev/null | grep -q AMQP
}
redis_up() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$REDIS_HOST/$REDIS_PORT && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null | grep -q PONG
}
is_local() { case "$1" in 127.*|localhost|::1) return 0;; *) return 1;; esac; }

wait_for() { # name check seconds
  local end=$((SECONDS + $3))
  while ((SECONDS < end)); do
    if "$2"; then return 0; fi
    sleep 0.5
  done
  return 1
}

install_debian() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    return 0
  fi
  return 1
}

advice() {
  say "$1 is not reachable and could not be started here."
  say "Install Debian's packages (sudo apt-get install -y rabbitmq-server redis-server),"
  say "or run them in containers: docker compose up -d rabbitmq redis"
  say "or point FLOTILLA_AMQP_URL / FLOTILLA_REDIS_URL at running servers."
  exit 1
}

if redis_up; then
  say "Redis answers on $REDIS_HOST:$REDIS_PORT"
elif is_local "$REDIS_HOST"; then
  command -v redis-server >/dev/null 2>&1 || install_debian redis-server || advice Redis
  # No persistence: results of local runs are disposable (production configs use AOF).
  say "starting redis-server on $REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  wait_for Redis redis_up 20 || advice Redis
else
  advice "Redis at $REDIS_HOST:$REDIS_PORT"
fi

if amqp_up; then
  say "RabbitMQ answers on $AMQP_HOST:$AMQP_PORT"
elif is_local "$AMQP_HOST"; then
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    install_debian rabbitmq-server || advice RabbitMQ
  fi
  say "starting rabbitmq-server (takes a few seconds)"
  PATH="$PATH:/usr/sbin" rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ amqp_up 90 || advice RabbitMQ
  # The port opens before the node has finished booting.
  PATH="$PATH:/usr/sbin" timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1 || true
else
  advice "RabbitMQ at $AMQP_HOST:$AMQP_PORT"
fi
