# A throwaway PostgreSQL server for the sweep tests (source it; bash).
#
#   source .ci/postgres.sh      # starts it, exports FUNCAE_TEST_POSTGRES_URL
#   make test                   # the PostgreSQL sweep tests run against it (they skip, saying why, without it)
#   funcae_postgres_stop        # stops it and deletes its folder (.ci/run does this in a trap on exit)
#
# Debian's `postgresql` package is installed when initdb is missing (as root). The cluster lives in a temp
# folder owned by the `postgres` user (initdb refuses root), listens on 127.0.0.1 on a free port, with its
# unix socket in that folder; it has one database and one user with a password, who may create databases
# (tests/test_sweep_start.py starts workers on a fresh database each round, and drops it).

_funcae_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  return 1
}

# Run a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
_funcae_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

funcae_postgres_start() {
  local bin
  if ! bin=$(_funcae_pg_bin); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "postgres.sh: installing Debian's postgresql package" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null || return 1
      bin=$(_funcae_pg_bin) || return 1
    else
      echo "postgres.sh: no PostgreSQL server (initdb) found; install Debian's postgresql package" >&2
      return 1
    fi
  fi
  FUNCAE_PG_DIR=$(mktemp -d /tmp/funcae-pg.XXXXXX)
  chmod 755 "$FUNCAE_PG_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$FUNCAE_PG_DIR"; fi
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local pw="funcae-$RANDOM$RANDOM"
  _funcae_pg_as_owner "$bin/initdb" -D "$FUNCAE_PG_DIR/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 -E UTF8 >"$FUNCAE_PG_DIR/initdb.log" 2>&1 || {
    cat "$FUNCAE_PG_DIR/initdb.log" >&2; return 1; }
  _funcae_pg_as_owner "$bin/pg_ctl" -D "$FUNCAE_PG_DIR/data" -l "$FUNCAE_PG_DIR/server.log" -w \
    -o "-p $port -k $FUNCAE_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" start \
    >/dev/null || { cat "$FUNCAE_PG_DIR/server.log" >&2; return 1; }
  _funcae_pg_as_owner psql -q -h "$FUNCAE_PG_DIR" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE USER funcae WITH PASSWORD '$pw' CREATEDB;" -c "CREATE DATABASE funcae_test OWNER funcae;" || return 1
  FUNCAE_PG_BIN=$bin
  export FUNCAE_TEST_POSTGRES_URL="postgresql+psycopg://funcae:$pw@127.0.0.1:$port/funcae_test"
  echo "postgres.sh: PostgreSQL on 127.0.0.1:$port (folder $FUNCAE_PG_DIR); FUNCAE_TEST_POSTGRES_URL exported" >&2
}

funcae_postgres_stop() {
  if [ -n "${FUNCAE_PG_DIR:-}" ] && [ -d "$FUNCAE_PG_DIR" ]; then
    _funcae_pg_as_owner "$FUNCAE_PG_BIN/pg_ctl" -D "$FUNCAE_PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$FUNCAE_PG_DIR"
  fi
  unset FUNCAE_PG_DIR FUNCAE_TEST_POSTGRES_URL
}

funcae_postgres_start
