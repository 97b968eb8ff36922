#!/usr/bin/env bash
# make chaos: JOBS jobs (default 1000) through a stack of its own while faults hit it, then a
# check that every job succeeded exactly once and no bytes were left behind.
#
# The stack is `make up`'s, on ports and in a folder of its own (.dev/chaos), with its own
# PostgreSQL cluster (Debian's pg_createcluster, port 55432) and its own Redis (port 56379), so
# the faults touch nothing else on the machine. Three generators run the benchmark backend
# (a small generated image after 300 ms, no CPU), 4 slots each.
#
# Faults, while the driver submits the jobs over SUBMIT_SECS (default 40) and waits for them:
#   - a generator killed with SIGKILL every 2 s (round robin) and started again at once;
#   - the scheduler restarted (SIGTERM, start) at 5 s and 30 s;
#   - the organizer restarted at 10 s;
#   - Redis stopped at 14 s and started again 10 s later;
#   - PostgreSQL restarted (pg_ctlcluster restart, fast) at 26 s.
# Then the driver checks, through the API, the scheduler's logs and the storage folder: every
# job succeeded, one job per submit, one completion each, one set of files each, no file on
# disk without its record and no record without its file. Non-zero exit on any loss or
# duplicate. `make chaos JOBS=100` is what CI runs.
#
#   JOBS=1000 SUBMIT_SECS=40 CHAOS_KEEP=1 (leave the stack up afterwards)
set -euo pipefail

export SAKUGA_DEV_DIR="${SAKUGA_DEV_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)/.dev/chaos}"
export SAKUGA_PG_PORT="${CHAOS_PG_PORT:-55432}" SAKUGA_PG_CLUSTER=sakuga_chaos
export SAKUGA_REDIS_PORT="${CHAOS_REDIS_PORT:-56379}" SAKUGA_BAO_ADDR="127.0.0.1:${CHAOS_BAO_PORT:-58200}"
export SAKUGA_AUTH_PORT=55051 SAKUGA_SCHEDULER_PORT=55052 SAKUGA_ORGANIZER_PORT=55053 SAKUGA_GENERATOR_PORT=55054
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JOBS="${JOBS:-1000}"
SUBMIT_SECS="${SUBMIT_SECS:-40}"
GENERATORS=(generator generator-2 generator-3)
SERVICE_PORT[generator-2]=55055
SERVICE_PORT[generator-3]=55056

# Service settings for the run (environment overrides reach only their service).
export SAKUGA_LOG_FORMAT=json
export SAKUGA_AUTH__SERVER__METRICS_LISTEN=127.0.0.1:0 SAKUGA_SCHEDULER__SERVER__METRICS_LISTEN=127.0.0.1:0
export SAKUGA_ORGANIZER__SERVER__METRICS_LISTEN=127.0.0.1:0 SAKUGA_GENERATOR__SERVER__METRICS_LISTEN=127.0.0.1:0
# Short leases so a killed generator's jobs come back within seconds; a retry budget that
# a job can spend on being killed repeatedly (each attempt is counted and reported).
export SAKUGA_SCHEDULER__LEASE_TTL=4s SAKUGA_SCHEDULER__HEARTBEAT_INTERVAL=1s
export SAKUGA_SCHEDULER__MAX_ATTEMPTS=25 SAKUGA_SCHEDULER__MAX_ACTIVE_JOBS_PER_USER=100000
export SAKUGA_SCHEDULER__SERVER__SHUTDOWN_GRACE=5s SAKUGA_ORGANIZER__SERVER__SHUTDOWN_GRACE=5s
# One user (the driver) submits all the jobs: the per-user limits are raised so that the run
# measures losses, not the limiter (which still runs, and fails closed while Redis is away).
for svc in SCHEDULER ORGANIZER; do
    for class in SUBMIT READ; do
        export "SAKUGA_${svc}__RATE_LIMITS__${class}__PER_MINUTE=600000" "SAKUGA_${svc}__RATE_LIMITS__${class}__BURST=10000"
    done
done
export SAKUGA_GENERATOR__BACKEND=benchmark SAKUGA_GENERATOR__BENCHMARK__HOLD=300ms
export SAKUGA_GENERATOR__SLOTS=4 SAKUGA_GENERATOR__RECONNECT_MAX_BACKOFF=1s

pg_version_cluster() { # prints VERSION/CLUSTER of our cluster, from $DEV/pids
    awk '$1 == "postgres" && $3 ~ /^pg:/ { sub(/^pg:/, "", $3); v = $3 } END { print v }' "$PIDS" 2>/dev/null
}

redis_start() {
    redis-server --daemonize yes --port "$REDIS_PORT" --bind "$LOOPBACK" --save '' --appendonly no \
        --dir "$DEV/redis" --pidfile "$DEV/run/redis.pid" --logfile "$DEV/logs/redis.log" >/dev/null
    for _ in $(seq 1 50); do
        redis_check_answer "$(redis_ping)" && [ -s "$DEV/run/redis.pid" ] && break
        sleep 0.2
    done
    pids_add redis "$(cat "$DEV/run/redis.pid")" own
    # Redis keeps nothing on disk here, so the services' ACL users are made again from the
    # passwords they read from OpenBao.
    local pw s
    for s in $(redis_acl_services); do
        pw="$(BAO_ADDR="$BAO_URL" BAO_TOKEN="$(cat "$DEV/vault/root-token")" "$TOOLS_BIN/bao" kv get \
            -mount=secret -field=password "sakuga/$s/redis")"
        redis_acl_setuser "$s" "$pw" | redis_admin >/dev/null
    done
}

# One fault, by name; the driver's timeline calls these.
act() {
    case "$1" in
    kill-generator) # kill-generator NAME: SIGKILL, then start it again at once
        local pid
        pid="$(pids_get "$2")"
        pid_is "$2" "$pid" && kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.05; done
        start_service "$2" --append --no-wait >/dev/null
        ;;
    restart) # restart SERVICE: SIGTERM (it drains), then start it again
        local pid
        pid="$(pids_get "$2")"
        if pid_is "$2" "$pid"; then
            kill -TERM "$pid"
            for _ in $(seq 1 300); do pid_alive "$pid" || break; sleep 0.1; done
            pid_alive "$pid" && kill -KILL "$pid"
        fi
        start_service "$2" --append >/dev/null
        ;;
    redis-stop)
        redis_admin shutdown nosave >/dev/null 2>&1 || true
        for _ in $(seq 1 50); do redis_check_answer "$(redis_ping)" || break; sleep 0.1; done
        ;;
    redis-start) redis_start ;;
    pg-restart)
        local vc
        vc="$(pg_version_cluster)"
        [ -n "$vc" ] || die "no PostgreSQL cluster of ours is recorded in $PIDS"
        as_root pg_ctlcluster --skip-systemctl-redirect "${vc%/*}" "${vc#*/}" restart -m fast
        ;;
    storage-keys) # where every file record's bytes are (its blob, or its name from before blobs), one a line
        pg_admin -d "$APP_DB_NAME" -At <<<"SELECT coalesce(blob_key, storage_key) FROM files"
        ;;
    *) die "unknown action $1" ;;
    esac
}

drop_cluster() {
    local ver
    for ver in $(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null); do
        if [ -d "/etc/postgresql/$ver/$PG_CLUSTER" ]; then
            as_root pg_dropcluster --stop "$ver" "$PG_CLUSTER"
        fi
    done
}

teardown() {
    local rc=$?
    if [ "${CHAOS_KEEP:-0}" = 1 ]; then
        warn "CHAOS_KEEP=1: the chaos stack is left up (SAKUGA_DEV_DIR=$DEV bash scripts/down.sh stops it)"
        exit "$rc"
    fi
    bash "$ROOT/scripts/down.sh" >/dev/null || rc=1
    drop_cluster || true
    exit "$rc"
}

if [ "${1:-}" = act ]; then
    shift
    act "$@"
    exit 0
fi

# ------------------------------------------------------------------------------------ set-up
command -v pg_createcluster >/dev/null 2>&1 || apt_install postgresql
command -v redis-server >/dev/null 2>&1 || apt_install redis-server
[ ! -f "$PIDS" ] || bash "$ROOT/scripts/down.sh" >/dev/null
drop_cluster # a cluster left by an interrupted run holds its jobs; start from nothing
rm -rf "$DEV"
mkdir -p "$DEV"
trap teardown EXIT
bash "$ROOT/scripts/up.sh"
for g in generator-2 generator-3; do
    sed -e "s/^listen = .*/listen = \"$LOOPBACK:${SERVICE_PORT[$g]}\"/" "$DEV/config/generator.toml" \
        >"$DEV/config/$g.toml"
done
for g in "${GENERATORS[@]}"; do
    # A top-level key: right after the header comment, before any [table].
    sed -i "1a worker_id = \"chaos-$g\"" "$DEV/config/$g.toml"
done
act restart generator # with its worker id
for g in generator-2 generator-3; do
    start_service "$g"
done

# ------------------------------------------------------------------------------------ run
log "chaos: $JOBS jobs over ${SUBMIT_SECS}s with faults"
(cd "$ROOT" && cargo build -q -p sakuga-benches --bin sakuga-chaos)
"$CARGO_TARGET_DIR/debug/sakuga-chaos" --dev "$DEV" --jobs "$JOBS" --submit-secs "$SUBMIT_SECS" \
    --script "$ROOT/scripts/chaos.sh" --generators "${GENERATORS[*]}"
