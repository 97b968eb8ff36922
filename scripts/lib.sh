# shellcheck shell=bash disable=SC2034,SC2120
# (SC2034: the variables are used by the scripts that source this file.)
# Shared helpers of the local-stack scripts. Source it; it does not run anything by itself.
#
#   ROOT      the repository root (computed from this file's location)
#   DEV       $ROOT/.dev: everything the local stack writes (git-ignored)
#   TOOLS     $ROOT/.tools: pinned tools installed by scripts/tools.sh (git-ignored)
#
# Environment knobs (all optional):
#   SAKUGA_PG_PORT (5432), SAKUGA_PG_CLUSTER (main), SAKUGA_REDIS_PORT (6379), SAKUGA_BAO_ADDR (127.0.0.1:8200),
#   SAKUGA_AUTH_PORT (15051), SAKUGA_SCHEDULER_PORT (15052), SAKUGA_ORGANIZER_PORT (15053),
#   SAKUGA_GENERATOR_PORT (15054, the generator's health port), CARGO_TARGET_DIR.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEV="${SAKUGA_DEV_DIR:-$ROOT/.dev}"
TOOLS="$ROOT/.tools"
TOOLS_BIN="$TOOLS/bin"
PIDS="$DEV/pids"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sakuga/target}"
BIN_DIR="${SAKUGA_BIN_DIR:-$CARGO_TARGET_DIR/debug}"

LOOPBACK=127.0.0.1
PG_PORT="${SAKUGA_PG_PORT:-5432}"
PG_CLUSTER="${SAKUGA_PG_CLUSTER:-main}" # the Debian cluster started when nothing answers
REDIS_PORT="${SAKUGA_REDIS_PORT:-6379}"
BAO_LISTEN="${SAKUGA_BAO_ADDR:-127.0.0.1:8200}"
BAO_LISTEN="${BAO_LISTEN#http://}"
BAO_URL="http://$BAO_LISTEN"

SERVICES=(auth scheduler organizer generator)
declare -A SERVICE_PORT=(
    [auth]="${SAKUGA_AUTH_PORT:-15051}"
    [scheduler]="${SAKUGA_SCHEDULER_PORT:-15052}"
    [organizer]="${SAKUGA_ORGANIZER_PORT:-15053}"
    [generator]="${SAKUGA_GENERATOR_PORT:-${SAKUGA_GENERATOR_HEALTH_PORT:-15054}}"
)

# The PostgreSQL role and database the services use, and the Redis ACL user.
APP_DB_USER=sakuga
APP_DB_NAME=sakuga
APP_REDIS_USER=sakuga
TEST_DB_USER=sakuga_test

# ---------------------------------------------------------------------------- output

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then
    _c_b=$'\033[1m' _c_r=$'\033[31m' _c_y=$'\033[33m' _c_0=$'\033[0m'
else
    _c_b='' _c_r='' _c_y='' _c_0=''
fi
log() { printf '%s==>%s %s\n' "$_c_b" "$_c_0" "$*"; }
warn() { printf '%swarning:%s %s\n' "$_c_y" "$_c_0" "$*" >&2; }
die() {
    printf '%serror:%s %s\n' "$_c_r" "$_c_0" "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a command as root: directly when we are root, else through sudo without a prompt.
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

_APT_UPDATED=""
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand: $*"
    # One `apt-get update` per run, skipped when the package lists are less than an hour old.
    if [ -z "$_APT_UPDATED" ] &&
        [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -60 2>/dev/null | head -n 1)" ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# True when something accepts TCP connections on HOST PORT.
port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Prints a fresh random secret (48 hex characters, safe in SQL literals, URLs and ACL rules).
random_secret() {
    python3 -c 'import secrets; print(secrets.token_hex(24))'
}

# Writes stdin to FILE with mode 0600 (the file is created private before anything lands).
write_private() {
    local file="$1"
    mkdir -p "$(dirname "$file")"
    (umask 077 && : >"$file")
    chmod 600 "$file"
    cat >"$file"
}

# Runs a command with only harmless variables in its environment: no tokens, no passwords.
# Overrides meant for a service (SAKUGA_<SERVICE>__*) pass through to that service.
# Used with exec in a background subshell, so the pid of that subshell is the program's.
exec_clean() { # PREFIX-TO-KEEP COMMAND...
    local keep="$1" v
    shift
    while read -r v; do
        case "$v" in
        PATH | HOME | USER | LOGNAME | LANG | LC_* | TZ | TMPDIR | RUST_LOG | RUST_BACKTRACE | NO_COLOR | OTEL_* | SAKUGA_LOG_FORMAT) ;;
        *) if [ -n "$keep" ] && [[ "$v" == "$keep"* ]]; then :; else unset "$v" 2>/dev/null || true; fi ;;
        esac
    done < <(compgen -e)
    exec setsid "$@"
}

# The directory buf runs in: the one holding buf.yaml (proto/, or the repository root).
buf_dir() {
    if [ -f "$ROOT/proto/buf.yaml" ]; then
        echo "$ROOT/proto"
    elif [ -f "$ROOT/buf.yaml" ]; then
        echo "$ROOT"
    else
        die "no buf.yaml in proto/ or the repository root"
    fi
}

# ---------------------------------------------------------------------------- pid bookkeeping
# $DEV/pids holds one process a line: "NAME PID [HOW]". HOW is "pg:VERSION/CLUSTER" for a
# PostgreSQL cluster we started. Only what is listed there is ever stopped by down.sh.

# True when PID is a live process (a zombie waiting for its parent counts as gone).
pid_alive() {
    [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -gt 1 ] && kill -0 "$1" 2>/dev/null || return 1
    local state=""
    [ -r "/proc/$1/stat" ] && state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [ "$state" != Z ]
}

# The executable name we expect behind each entry, so a recycled pid is never signalled.
expected_exe() {
    case "$1" in
    bao) echo bao ;;
    weed) echo weed ;;
    redis) echo redis-server ;;
    postgres) echo postgres ;;
    *-[0-9]*) echo "sakuga-${1%%-*}" ;; # a replica (generator-2, organizer-2)
    *) echo "sakuga-$1" ;;
    esac
}

# True when PID is alive and is the process NAME refers to.
pid_is() {
    local name="$1" pid="$2" exe cmd
    pid_alive "$pid" || return 1
    exe="$(expected_exe "$name")"
    [ -r "/proc/$pid/cmdline" ] || return 0
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmd" == *"$exe"* ]]
}

pids_add() {
    mkdir -p "$DEV"
    echo "$*" >>"$PIDS"
}

# Prints the pid recorded for NAME (last entry wins), or nothing.
pids_get() {
    [ -f "$PIDS" ] || return 0
    awk -v n="$1" '$1 == n { p = $2 } END { if (p != "") print p }' "$PIDS"
}

# True when NAME is recorded and still running.
recorded_running() {
    local pid
    pid="$(pids_get "$1")"
    [ -n "$pid" ] && pid_is "$1" "$pid"
}

# ---------------------------------------------------------------------------- PostgreSQL

pg_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$LOOPBACK" -p "$PG_PORT" -t 2
    else
        port_open "$LOOPBACK" "$PG_PORT"
    fi
}

_PG_ADMIN_MODE=""
# Runs psql as the PostgreSQL superuser against database "postgres", SQL on stdin, extra
# psql arguments in "$@". TCP as user postgres first (trust or PGPASSWORD), then the
# Unix socket as the postgres OS user (Debian's default peer authentication).
pg_admin() {
    local common=(-X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres)
    if [ -z "$_PG_ADMIN_MODE" ]; then
        if psql -h "$LOOPBACK" -U postgres -w "${common[@]}" -Atc 'select 1' >/dev/null 2>&1; then
            _PG_ADMIN_MODE=tcp
        elif (cd / && as_root runuser -u postgres -- psql "${common[@]}" -Atc 'select 1') >/dev/null 2>&1; then
            _PG_ADMIN_MODE=socket
        else
            die "cannot reach PostgreSQL on $LOOPBACK:$PG_PORT as superuser 'postgres' (tried TCP without a password and the local socket as the postgres OS user; set PGPASSWORD if it needs one)"
        fi
    fi
    if [ "$_PG_ADMIN_MODE" = tcp ]; then
        psql -h "$LOOPBACK" -U postgres -w "${common[@]}" "$@"
    else
        (cd / && as_root runuser -u postgres -- psql "${common[@]}" "$@")
    fi
}

# Makes sure PostgreSQL answers on 127.0.0.1:$PG_PORT: uses a running server, else installs
# (Debian) and starts the local cluster and records it in $DEV/pids so down.sh stops it.
ensure_postgres() {
    if ! command -v psql >/dev/null 2>&1; then
        if pg_answers; then
            apt_install postgresql-client
        else
            apt_install postgresql
        fi
    fi
    if pg_answers; then
        log "PostgreSQL answers on $LOOPBACK:$PG_PORT (using it)"
        return 0
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_install postgresql
        if pg_answers; then
            log "PostgreSQL answers on $LOOPBACK:$PG_PORT after install (using it)"
            return 0
        fi
    fi
    local ver
    ver="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$ver" ]; then
        apt_install postgresql
        ver="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    fi
    [ -n "$ver" ] || die "no PostgreSQL cluster found under /etc/postgresql"
    local c="$PG_CLUSTER"
    if [ ! -d "/etc/postgresql/$ver/$c" ]; then
        log "creating PostgreSQL cluster $ver/$c on port $PG_PORT"
        as_root pg_createcluster -p "$PG_PORT" "$ver" "$c" >/dev/null
    fi
    log "starting PostgreSQL cluster $ver/$c"
    as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$c" start ||
        die "pg_ctlcluster $ver $c start failed (is the cluster configured for port $PG_PORT?)"
    for _ in $(seq 1 30); do
        pg_answers && break
        sleep 1
    done
    pg_answers || die "PostgreSQL cluster $ver/$c started but nothing answers on $LOOPBACK:$PG_PORT (check its port in /etc/postgresql/$ver/$c/postgresql.conf)"
    local pid=""
    if [ -r "/var/run/postgresql/$ver-$c.pid" ]; then
        pid="$(head -n 1 "/var/run/postgresql/$ver-$c.pid")"
    elif [ -r "/var/lib/postgresql/$ver/$c/postmaster.pid" ]; then
        pid="$(head -n 1 "/var/lib/postgresql/$ver/$c/postmaster.pid")"
    fi
    pids_add postgres "${pid:-0}" "pg:$ver/$c"
}

# ---------------------------------------------------------------------------- Redis

# Redis's answer to PING, without any password the caller's environment may carry.
redis_ping() {
    env -u REDISCLI_AUTH redis-cli -h "$LOOPBACK" -p "$REDIS_PORT" ping 2>&1 || true
}

# Runs redis-cli against our Redis with commands on stdin (never in argv).
redis_admin() {
    env -u REDISCLI_AUTH redis-cli -h "$LOOPBACK" -p "$REDIS_PORT" "$@"
}

redis_check_answer() {
    case "$1" in
    *PONG*) return 0 ;;
    *NOAUTH* | *"Authentication required"* | *WRONGPASS*)
        die "Redis on $LOOPBACK:$REDIS_PORT requires a password for the default user; the dev stack and the tests need one whose default user has none (set SAKUGA_REDIS_PORT to a free port and we start our own there)"
        ;;
    *) return 1 ;;
    esac
}

# Makes sure Redis answers on 127.0.0.1:$REDIS_PORT: uses a running server, else starts our
# own (no persistence) and records it in $DEV/pids so down.sh stops it.
ensure_redis() {
    if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-server >/dev/null 2>&1; then
        if command -v redis-cli >/dev/null 2>&1 && redis_check_answer "$(redis_ping)"; then
            log "Redis answers on $LOOPBACK:$REDIS_PORT (using it)"
            return 0
        fi
        apt_install redis-server
    fi
    if redis_check_answer "$(redis_ping)"; then
        log "Redis answers on $LOOPBACK:$REDIS_PORT (using it)"
        return 0
    fi
    port_open "$LOOPBACK" "$REDIS_PORT" &&
        die "something that is not Redis listens on $LOOPBACK:$REDIS_PORT"
    log "starting redis-server on $LOOPBACK:$REDIS_PORT"
    mkdir -p "$DEV/run" "$DEV/redis" "$DEV/logs"
    rm -f "$DEV/run/redis.pid"
    redis-server --daemonize yes --port "$REDIS_PORT" --bind "$LOOPBACK" --save '' \
        --appendonly no --dir "$DEV/redis" --pidfile "$DEV/run/redis.pid" \
        --logfile "$DEV/logs/redis.log" >/dev/null
    for _ in $(seq 1 50); do
        redis_check_answer "$(redis_ping)" && [ -s "$DEV/run/redis.pid" ] && break
        sleep 0.2
    done
    redis_check_answer "$(redis_ping)" || die "redis-server did not answer; see $DEV/logs/redis.log"
    pids_add redis "$(cat "$DEV/run/redis.pid")" own
}

# ---------------------------------------------------------------------------- test database role

# Creates (once) the CREATEDB role the test harness uses and prints nothing; the password
# stays in $DEV/test/db-password (0600) and is reapplied on every call, so a PostgreSQL
# that was recreated gets the role back.
ensure_test_db_role() {
    local pwfile="$DEV/test/db-password" pw
    if [ ! -s "$pwfile" ]; then
        random_secret | write_private "$pwfile"
    fi
    pw="$(cat "$pwfile")"
    pg_admin <<SQL
SELECT format('CREATE ROLE %I', '$TEST_DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$TEST_DB_USER') \gexec
ALTER ROLE $TEST_DB_USER WITH LOGIN CREATEDB NOSUPERUSER NOCREATEROLE PASSWORD '$pw';
SQL
    # Member of the services' group roles: the tests check each one's privileges with
    # SET ROLE on databases this role migrated.
    ensure_service_db_groups
    printf 'GRANT %s TO %s;\n' "$(IFS=,; echo "${SERVICE_DB_GROUPS[*]}")" "$TEST_DB_USER" | pg_admin
}

# ---------------------------------------------------------------------------- service database roles

# The NOLOGIN group role of each service (migration 0010 grants each exactly what that
# service's queries need; a service's login role is a member of its group). Created here as
# the superuser, so a migrating role without CREATEROLE finds them.
SERVICE_DB_GROUPS=(sakuga_auth sakuga_scheduler sakuga_organizer sakuga_generator)
ensure_service_db_groups() {
    local g
    for g in "${SERVICE_DB_GROUPS[@]}"; do
        printf "SELECT format('CREATE ROLE %%I NOLOGIN', '%s') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '%s') \\gexec\n" "$g" "$g"
    done | pg_admin
}

# ---------------------------------------------------------------------------- service Redis users

# The services that have a Redis ACL user of their own (deploy/redis/acl.conf).
redis_acl_services() {
    sed -n 's/^\([a-z][a-z]*\) .*/\1/p' "$ROOT/deploy/redis/acl.conf"
}

# Prints the ACL SETUSER line that (re)creates SERVICE's user `sakuga-SERVICE` with
# PASSWORD and its rules from deploy/redis/acl.conf on the prefix `sakuga:`; for
# redis_admin's stdin (the password never reaches argv).
redis_acl_setuser() { # SERVICE PASSWORD
    local rules
    rules="$(sed -n "s/^$1 //p" "$ROOT/deploy/redis/acl.conf")"
    [ -n "$rules" ] || die "deploy/redis/acl.conf has no rules for $1"
    printf 'ACL SETUSER sakuga-%s reset on >%s %s\n' "$1" "$2" "${rules//\{prefix\}/sakuga:}"
}

test_database_url() {
    echo "postgres://$TEST_DB_USER:$(cat "$DEV/test/db-password")@$LOOPBACK:$PG_PORT/postgres"
}

# ---------------------------------------------------------------------------- test OpenBao

# Starts one OpenBao dev server for a whole test or benchmark run and exports
# SAKUGA_TEST_VAULT_ADDR/TOKEN for it; it stops when the calling script exits. Its root
# token exists only in that script's environment and its children's.
start_test_bao() {
    local bao_port
    bao_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    SAKUGA_TEST_VAULT_TOKEN="$(random_secret)"
    export SAKUGA_TEST_VAULT_TOKEN
    export SAKUGA_TEST_VAULT_ADDR="http://$LOOPBACK:$bao_port"
    mkdir -p "$DEV/logs"
    BAO_DEV_ROOT_TOKEN_ID="$SAKUGA_TEST_VAULT_TOKEN" "$TOOLS_BIN/bao" server -dev -dev-no-store-token \
        -dev-listen-address="$LOOPBACK:$bao_port" >"$DEV/logs/test-bao.log" 2>&1 </dev/null &
    _TEST_BAO_PID=$!
    trap 'kill "$_TEST_BAO_PID" 2>/dev/null || true; wait "$_TEST_BAO_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        port_open "$LOOPBACK" "$bao_port" && break
        pid_alive "$_TEST_BAO_PID" || die "the test OpenBao server exited; see .dev/logs/test-bao.log"
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------- services

# Prints grpcurl's answer to a health check on 127.0.0.1:PORT with the operator certificate.
health_check() { # PORT
    "$TOOLS_BIN/grpcurl" -max-time 5 -cacert "$DEV/certs/ca.pem" -cert "$DEV/certs/operator.pem" \
        -key "$DEV/certs/operator.key" "$LOOPBACK:$1" grpc.health.v1.Health/Check 2>&1 || true
}

# Starts service NAME (auth, scheduler, organizer, generator or generator-N) with
# $DEV/config/NAME.toml, records it in $DEV/pids and waits until its health check says
# SERVING (${UP_TIMEOUT:-60} s). NAME's port is ${SERVICE_PORT[NAME]}.
#   --append   keep the log file (a restart); the default starts it empty
#   --no-wait  return once the process is started
start_service() { # NAME [--append] [--no-wait]
    local s="$1" append=0 wait=1 a
    shift
    for a in "$@"; do
        case "$a" in
        --append) append=1 ;;
        --no-wait) wait=0 ;;
        *) die "start_service: unknown option $a" ;;
        esac
    done
    local svc="${s%%-*}" port="${SERVICE_PORT[$s]}" log_file="$DEV/logs/$s.log" pid i out=""
    port_open "$LOOPBACK" "$port" &&
        die "$LOOPBACK:$port (for $s) is taken by another process; free it or set SAKUGA_${svc^^}_PORT"
    mkdir -p "$DEV/logs"
    [ "$append" -eq 1 ] || : >"$log_file"
    log "starting $s on $LOOPBACK:$port (log $log_file)"
    (cd "$ROOT" && exec_clean "SAKUGA_${svc^^}__" "$BIN_DIR/sakuga-$svc" --config "$DEV/config/$s.toml" serve \
        >>"$log_file" 2>&1 </dev/null) &
    pid=$!
    disown "$pid" 2>/dev/null || true # its end (a kill, in chaos runs) is not this shell's news
    pids_add "$s" "$pid"
    [ "$wait" -eq 1 ] || return 0
    for ((i = 0; i < ${UP_TIMEOUT:-60}; i++)); do
        if ! pid_alive "$pid"; then
            tail -n 40 "$log_file" >&2
            die "$s exited during start-up (log above, in $log_file)"
        fi
        out="$(health_check "$port")"
        [[ "$out" == *'"SERVING"'* ]] && return 0
        sleep 1
    done
    tail -n 40 "$log_file" >&2
    die "$s did not report SERVING within ${UP_TIMEOUT:-60}s; last health answer: $(printf '%s' "$out" | head -n 3)"
}
