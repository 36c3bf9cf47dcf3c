#!/usr/bin/env bash
# Start a local PostgreSQL server for the sweep tests and print its SQLAlchemy URL on stdout (nothing else there).
# Idempotent; when the server already answers it only checks the login (well under a second).
# Uses Debian's cluster tools (postgres refuses to run as root; pg_ctlcluster runs it as the postgres user) and, as
# root, installs Debian's postgresql package when they are missing. When it cannot, it prints one line on stderr
# and exits 1; the tests that need the server then skip with that line.
#
# Knobs (environment): LORAKIT_PG_INSTALL=0 never runs apt-get; LORAKIT_PG_CTLCLUSTER points at another
# pg_ctlcluster (a missing path simulates a machine that cannot start a server).
set -uo pipefail

USER_NAME=lorakit PASSWORD=lorakit DB=lorakit_test HOST=127.0.0.1 PORT=5432
URL="postgresql+psycopg://${USER_NAME}:${PASSWORD}@${HOST}:${PORT}/${DB}"
CTL="${LORAKIT_PG_CTLCLUSTER:-pg_ctlcluster}"
TOOLS=(pg_lsclusters pg_createcluster psql pg_isready runuser "$CTL")

fail() { echo "postgres.sh: cannot start PostgreSQL: $*" >&2; exit 1; }
log() { echo "postgres.sh: $*" >&2; }
last_line() { tail -n1 <<<"$1" | grep . || echo "(no message)"; }
have_tools() { local t; for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || return 1; done; }
missing_tools() { local t; for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || printf '%s ' "$t"; done; }
# the test role can log in over TCP with its password: the one thing the tests need
login_ok() {
    command -v psql >/dev/null 2>&1 &&
        PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 psql -h "$HOST" -p "$PORT" -U "$USER_NAME" -d "$DB" \
            -XAtqc 'SELECT 1' >/dev/null 2>&1
}
# psql as the postgres superuser over the local socket; cd / so the postgres user can read its working directory
as_postgres() { (cd / && runuser -u postgres -- psql -p "$PORT" -XAtq -v ON_ERROR_STOP=1 "$@"); }

if login_ok; then echo "$URL"; exit 0; fi

# Two callers at once (the test script and a test session) must not both create the role or the cluster. Commands
# that may start the server get fd 9 closed (9>&-): a server holding it would hold the lock for as long as it runs.
exec 9>"${TMPDIR:-/tmp}/lorakit-postgres.lock"
command -v flock >/dev/null 2>&1 && flock -w 600 9
if login_ok; then echo "$URL"; exit 0; fi

if ! have_tools; then
    missing="missing $(missing_tools)"
    [ "$(id -u)" = 0 ] || fail "${missing}and not root to install them; install Debian's postgresql package"
    [ "${LORAKIT_PG_INSTALL:-1}" != 0 ] || fail "${missing}and LORAKIT_PG_INSTALL=0 forbids apt-get"
    command -v apt-get >/dev/null 2>&1 || fail "${missing}and no apt-get to install them"
    log "installing Debian's postgresql package (apt-get)"
    apt_log="$(mktemp)"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { timeout 600 apt-get install -y -q --no-install-recommends postgresql >>"$apt_log" 2>&1 9>&-; }
    # a clean machine often has no package lists yet: update once, only when the first try fails
    if ! apt_install; then
        timeout 300 apt-get update -q >>"$apt_log" 2>&1
        apt_install || fail "apt-get install postgresql failed: $(last_line "$(grep -E '^(E|W):' "$apt_log")")" \
            "(log: $apt_log)"
    fi
    rm -f "$apt_log"
    have_tools || fail "still missing $(missing_tools)after installing postgresql"
fi
[ "$(id -u)" = 0 ] || fail "the server is not answering and starting it needs root (pg_ctlcluster as postgres)"

# The cluster on our port: pg_lsclusters -h prints "version name port status owner datadir logfile".
read -r VERSION NAME STATUS < <(pg_lsclusters -h 2>/dev/null | awk -v p="$PORT" '$3 == p {print $1, $2, $4; exit}')
if [ -z "${VERSION:-}" ]; then
    VERSION="$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n1)"
    [ -n "$VERSION" ] || fail "no server binaries under /usr/lib/postgresql"
    NAME=main
    pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" '$1 == v && $2 == "main" {f=1} END {exit !f}' && NAME=lorakit
    log "creating cluster $VERSION/$NAME on port $PORT"
    out="$(pg_createcluster --locale C.UTF-8 -p "$PORT" "$VERSION" "$NAME" 2>&1 9>&-)" ||
        fail "pg_createcluster $VERSION $NAME failed: $(last_line "$out")"
    STATUS=down
fi

if [[ "$STATUS" != online* ]]; then
    log "starting cluster $VERSION/$NAME"
    out="$("$CTL" "$VERSION" "$NAME" start 2>&1 9>&-)" || fail "$CTL $VERSION $NAME start failed: $(last_line "$out")"
fi
for _ in $(seq 150); do  # up to 30 s for a cold start (crash recovery after an unclean stop)
    pg_isready -h "$HOST" -p "$PORT" -q && break
    sleep 0.2
done
pg_isready -h "$HOST" -p "$PORT" -q || fail "cluster $VERSION/$NAME started but $HOST:$PORT does not accept connections"

# The test role (it creates one fresh database per test) and its database; re-setting the password is harmless.
out="$(as_postgres 2>&1 <<SQL
DO \$\$ BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$USER_NAME') THEN
    ALTER ROLE $USER_NAME LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    CREATE ROLE $USER_NAME LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END \$\$;
SELECT 'CREATE DATABASE $DB OWNER $USER_NAME' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')
\gexec
SQL
)" || fail "creating role $USER_NAME / database $DB failed: $(last_line "$out")"

login_ok || fail "the server runs but $USER_NAME cannot log in to $DB on $HOST:$PORT (pg_hba.conf: allow passwords)"
echo "$URL"
