#!/usr/bin/env bash
# A local 3-node Citus cluster on demand: a coordinator and two workers, each its own PostgreSQL 15
# instance (own data folder, own log, own port), never the machine's own server.
#
#   bash bench/citus.sh up        install Citus if absent, init the nodes if absent, start them
#   bash bench/citus.sh down      stop the three nodes (data kept; `up` again is fast)
#   bash bench/citus.sh status    one line per node
#   bash bench/citus.sh url       the coordinator's maintenance URL
#   bash bench/citus.sh createdb NAME   a database on every node with the extension, workers registered
#   bash bench/citus.sh destroy   stop and remove the data folders
#
# Settings: CITUS_DIR (default /var/tmp/rewards-citus: outside the clone, whose folder user postgres
# may not be allowed to enter, e.g. one made by mktemp), CITUS_PORT (coordinator, default 9700; the
# workers take the next two ports). Idempotent: each step does nothing when it is already done.
# Needs root for the one-time build (the shared script uses apt); the nodes run as user postgres.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${CITUS_DIR:-/var/tmp/rewards-citus}
port=${CITUS_PORT:-9700}
bin=/usr/lib/postgresql/15/bin
nodes=(coordinator worker1 worker2)
build_script=${CITUS_BUILD_SCRIPT:-$repo/../shared/vendor/build-citus.sh}
[ -f "$build_script" ] || build_script=/work/shared/vendor/build-citus.sh

port_of() { case $1 in coordinator) echo "$port" ;; worker1) echo $((port + 1)) ;; worker2) echo $((port + 2)) ;; esac; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

psql_at() {  # psql_at PORT DATABASE SQL
  PGOPTIONS="-c client_min_messages=warning" \
  as_postgres "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d "$2" -tA -c "$3"
}

install_extension() {
  if [ -f "$("$bin/pg_config" --pkglibdir)/citus.so" ]; then return; fi
  if [ ! -f "$build_script" ]; then
    echo "citus.sh: Citus is not installed and $build_script is missing" >&2
    exit 1
  fi
  bash "$build_script"
}

init_node() {
  local node=$1 data="$dir/$1/data"
  if [ -f "$data/PG_VERSION" ]; then return; fi
  mkdir -p "$dir/$node"
  chown -R postgres:postgres "$dir" 2>/dev/null || true
  as_postgres "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$data/postgresql.conf" <<EOF
# bench/citus.sh
port = $(port_of "$node")
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/$node'
shared_preload_libraries = 'citus'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
timezone = 'UTC'
max_prepared_transactions = 200
citus.max_client_connections = 150
EOF
}

start_node() {
  local node=$1
  if is_running "$node"; then return; fi
  as_postgres "$bin/pg_ctl" -D "$dir/$node/data" -l "$dir/$node/postgres.log" -w -t 60 start >/dev/null
}

# A database with the extension on every node and the workers registered with the coordinator
# (Citus keeps its metadata per database, so every database needs this once).
create_database() {
  local name=$1 node
  for node in "${nodes[@]}"; do
    local p; p=$(port_of "$node")
    if [ -z "$(psql_at "$p" postgres "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
      psql_at "$p" postgres "CREATE DATABASE \"$name\""
    fi
    psql_at "$p" "$name" "CREATE EXTENSION IF NOT EXISTS citus"
  done
  psql_at "$port" "$name" "SELECT citus_set_coordinator_host('127.0.0.1', $port)" >/dev/null
  for node in worker1 worker2; do
    psql_at "$port" "$name" "SELECT citus_add_node('127.0.0.1', $(port_of "$node"))" >/dev/null
  done
}

up() {
  install_extension
  mkdir -p "$dir"
  [ -f "$dir/.gitignore" ] || echo '*' >"$dir/.gitignore"
  local node
  for node in "${nodes[@]}"; do init_node "$node"; done
  chown -R postgres:postgres "$dir" 2>/dev/null || true
  for node in "${nodes[@]}"; do start_node "$node"; done
  create_database postgres
  echo "citus cluster up: coordinator 127.0.0.1:$port, workers $((port + 1)) and $((port + 2)) ($dir)"
}

is_running() {  # is_running NODE
  [ -f "$dir/$1/data/PG_VERSION" ] && as_postgres "$bin/pg_ctl" -D "$dir/$1/data" status >/dev/null 2>&1
}

down() {
  local node
  for node in "${nodes[@]}"; do
    if is_running "$node"; then
      as_postgres "$bin/pg_ctl" -D "$dir/$node/data" -m fast -w stop >/dev/null
    fi
  done
  echo "citus cluster stopped"
}

status() {
  local node
  for node in "${nodes[@]}"; do
    if is_running "$node"; then
      echo "$node 127.0.0.1:$(port_of "$node") running"
    else
      echo "$node 127.0.0.1:$(port_of "$node") stopped"
    fi
  done
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  url) echo "postgresql://postgres@127.0.0.1:$port/postgres" ;;
  createdb) create_database "${2:?citus.sh createdb NAME}" ;;
  destroy) down; rm -rf "$dir"; echo "citus cluster removed ($dir)" ;;
  *) echo "usage: bash bench/citus.sh up|down|status|url|createdb NAME|destroy" >&2; exit 2 ;;
esac
