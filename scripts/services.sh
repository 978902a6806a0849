#!/usr/bin/env bash
# Makes sure the RabbitMQ (with its management plugin) and PostgreSQL that Warren's quick start
# and tests use are up and reachable. It starts them where they are installed, installs them from
# Debian's packages where they are missing and it runs as root, and otherwise says exactly what
# is missing. Where WARREN_AMQP_URL / WARREN_DATABASE_URL / WARREN_MANAGEMENT_URL point at another
# host, it only checks that they answer.
set -euo pipefail

AMQP_URL="${WARREN_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
DATABASE_URL="${WARREN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
MANAGEMENT_URL="${WARREN_MANAGEMENT_URL:-http://127.0.0.1:15672}"
RABBIT_USER="${WARREN_RABBITMQ_USERNAME:-guest}"
RABBIT_PASS="${WARREN_RABBITMQ_PASSWORD:-guest}"

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

# host and port of a URL (defaults to the given port)
host_of() { local r="${1#*://}"; r="${r#*@}"; r="${r%%/*}"; r="${r%%\?*}"; printf '%s' "${r%%:*}"; }
port_of() { local r="${1#*://}"; r="${r#*@}"; r="${r%%/*}"; r="${r%%\?*}"; [[ "$r" == *:* ]] && printf '%s' "${r##*:}" || printf '%s' "$2"; }
is_local() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 ]]; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    (( SECONDS < deadline )) || die "$what did not come up within ${secs}s"
    sleep 0.5
  done
}
can_install() { [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; }
apt_install() {
  say "installing $* from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
PG_HOST=$(host_of "$DATABASE_URL"); PG_PORT=$(port_of "$DATABASE_URL" 5432)
if ! port_open "$PG_HOST" "$PG_PORT"; then
  is_local "$PG_HOST" || die "PostgreSQL at $PG_HOST:$PG_PORT does not answer (WARREN_DATABASE_URL)"
  if ! command -v pg_ctlcluster >/dev/null; then
    can_install || die "PostgreSQL is not installed; install the Debian package 'postgresql' (as root) or set WARREN_DATABASE_URL"
    apt_install postgresql
    cfg=$(ls -d /etc/postgresql/*/main | head -n1)
    # Local tests connect as postgres over TCP without a password, as on the CI machines.
    grep -q 'warren: trust local TCP' "$cfg/pg_hba.conf" || \
      sed -i '1i host all all 127.0.0.1/32 trust # warren: trust local TCP\nhost all all ::1/128 trust' "$cfg/pg_hba.conf"
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_for 60 "PostgreSQL" port_open "$PG_HOST" "$PG_PORT"
fi
say "PostgreSQL answers on $PG_HOST:$PG_PORT"

# ---------------------------------------------------------------- RabbitMQ
MQ_HOST=$(host_of "$AMQP_URL"); MQ_PORT=$(port_of "$AMQP_URL" 5672)
if ! port_open "$MQ_HOST" "$MQ_PORT"; then
  is_local "$MQ_HOST" || die "RabbitMQ at $MQ_HOST:$MQ_PORT does not answer (WARREN_AMQP_URL)"
  if ! command -v rabbitmq-server >/dev/null; then
    can_install || die "RabbitMQ is not installed; install the Debian package 'rabbitmq-server' (as root) or set WARREN_AMQP_URL"
    apt_install rabbitmq-server
  fi
  say "starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_for 90 "RabbitMQ" port_open "$MQ_HOST" "$MQ_PORT"
fi
say "RabbitMQ answers on $MQ_HOST:$MQ_PORT"

management_ok() {
  command -v curl >/dev/null || die "curl is missing (Debian package 'curl')"
  curl -fsS -o /dev/null -u "$RABBIT_USER:$RABBIT_PASS" "$MANAGEMENT_URL/api/overview" 2>/dev/null
}
if ! management_ok; then
  MG_HOST=$(host_of "$MANAGEMENT_URL")
  is_local "$MG_HOST" || die "the management API at $MANAGEMENT_URL does not answer (WARREN_MANAGEMENT_URL)"
  command -v rabbitmq-plugins >/dev/null || die "rabbitmq-plugins is missing: cannot enable the management plugin"
  say "enabling the RabbitMQ management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_for 60 "the RabbitMQ management API" management_ok
fi
say "RabbitMQ management API answers on $MANAGEMENT_URL"
