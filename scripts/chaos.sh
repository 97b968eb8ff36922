#!/usr/bin/env bash
# make chaos: JOBS jobs (default 1000) through a stack of its own while faults hit it, then a
# check that every job succeeded exactly once and no bytes were left behind.
#
# The stack is `make up`'s, on ports and in a folder of its own (.dev/chaos), with its own
# PostgreSQL cluster (Debian's pg_createcluster, port 31432) and its own Redis (port 31379), so
# the faults touch nothing else on the machine. Three generators run the benchmark backend
# (a small generated image after 300 ms, no CPU), 4 slots each.
#
# Faults, while the driver submits the jobs over SUBMIT_SECS (default 40) and waits for them:
#   - a generator killed with SIGKILL every 2 s (round robin) and started again at once;
#   - the scheduler restarted (SIGTERM, start) at 5 s and 30 s;
#   - the organizer restarted at 10 s;
#   - Redis stopped at 14 s and started again 10 s later;
#   - PostgreSQL restarted (pg_ctlcluster restart, fast) at 26 s.
# With CHAOS_STORAGE=s3 the files go to a SeaweedFS of the run's own (S3 on port 8433) and
# two organizers serve it; the generators know both, and the second one is SIGKILLed every
# 3 s and started again at once.
# Then the driver checks, through the API, the scheduler's logs and the store: every job
# succeeded, one job per submit, one completion each, one set of files each whose bytes read
# back with the record's sha256, no object in the store without its record (after the
# reconciler's grace period) and no record without its object. Non-zero exit on any loss or
# duplicate. `make chaos JOBS=100` and `CHAOS_STORAGE=s3 make chaos JOBS=100` are what CI runs.
#
#   JOBS=1000 SUBMIT_SECS=40 CHAOS_STORAGE=local|s3 CHAOS_KEEP=1 (leave the stack up afterwards)
set -euo pipefail

export SAKUGA_DEV_DIR="${SAKUGA_DEV_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)/.dev/chaos}"
# Every port below 32768, outside Linux's ephemeral range (32768-60999): a service restarted
# in the middle of the run must never find its port taken by one of the run's hundreds of
# outgoing connections (it did, on 55052).
export SAKUGA_PG_PORT="${CHAOS_PG_PORT:-31432}" SAKUGA_PG_CLUSTER=sakuga_chaos
export SAKUGA_REDIS_PORT="${CHAOS_REDIS_PORT:-31379}" SAKUGA_BAO_ADDR="127.0.0.1:${CHAOS_BAO_PORT:-31200}"
export SAKUGA_AUTH_PORT=31051 SAKUGA_SCHEDULER_PORT=31052 SAKUGA_ORGANIZER_PORT=31053 SAKUGA_GENERATOR_PORT=31054
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JOBS="${JOBS:-1000}"
SUBMIT_SECS="${SUBMIT_SECS:-40}"
GENERATORS=(generator generator-2 generator-3)
SERVICE_PORT[generator-2]=31055
SERVICE_PORT[generator-3]=31056
STORAGE="${CHAOS_STORAGE:-local}"
case "$STORAGE" in
local) ORGANIZERS=(organizer) ;;
s3)
    ORGANIZERS=(organizer organizer-2)
    SERVICE_PORT[organizer-2]=31057
    export SAKUGA_STORAGE=s3 SAKUGA_WEED_S3_PORT=8433 SAKUGA_WEED_MASTER_PORT=19433
    export SAKUGA_WEED_VOLUME_PORT=18180 SAKUGA_WEED_FILER_PORT=18988
    ;;
*) die "CHAOS_STORAGE must be local or s3, got '$STORAGE'" ;;
esac

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
# The reconciler often, with a short grace period: bytes a killed organizer wrote without
# their record must be gone by the time the driver looks (grace + two passes).
export SAKUGA_ORGANIZER__RECONCILE_INTERVAL=5s SAKUGA_ORGANIZER__ORPHAN_GRACE=10s
ORPHAN_WAIT_SECS=30

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

# Waits (up to 10 s) until NAME's port is closed. A SIGKILLed service's main thread shows as
# a zombie while its other threads are still exiting with the listening socket open; on a
# busy machine that takes long enough for the restart to find the port taken.
port_released() {
    local i
    for i in $(seq 1 100); do
        port_open "$LOOPBACK" "${SERVICE_PORT[$1]}" || return 0
        sleep 0.1
    done
    die "$LOOPBACK:${SERVICE_PORT[$1]} (for $1) is still open 10 s after it was stopped"
}

# One fault, by name; the driver's timeline calls these.
act() {
    case "$1" in
    kill) # kill NAME: SIGKILL, then start it again at once
        local pid
        pid="$(pids_get "$2")"
        pid_is "$2" "$pid" && kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do pid_alive "$pid" || break; sleep 0.05; done
        port_released "$2"
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
        port_released "$2"
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
if [ "${#ORGANIZERS[@]}" -gt 1 ]; then
    organizer_addrs=""
    for o in "${ORGANIZERS[@]}"; do
        organizer_addrs="${organizer_addrs:+$organizer_addrs,}$LOOPBACK:${SERVICE_PORT[$o]}"
        [ "$o" = organizer ] ||
            sed -e "s/^listen = .*/listen = \"$LOOPBACK:${SERVICE_PORT[$o]}\"/" "$DEV/config/organizer.toml" \
                >"$DEV/config/$o.toml"
    done
    sed -i "s/^organizer_addr = .*/organizer_addr = \"$organizer_addrs\"/" "$DEV/config/generator.toml"
    for o in "${ORGANIZERS[@]:1}"; do
        start_service "$o"
    done
fi
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
chaos_args=(--dev "$DEV" --jobs "$JOBS" --submit-secs "$SUBMIT_SECS" --script "$ROOT/scripts/chaos.sh"
    --generators "${GENERATORS[*]}" --orphan-wait-secs "$ORPHAN_WAIT_SECS")
if [ "$STORAGE" = s3 ]; then
    chaos_args+=(--organizers "${ORGANIZERS[*]:1}" --s3-endpoint "http://$LOOPBACK:$SAKUGA_WEED_S3_PORT")
fi
"$CARGO_TARGET_DIR/debug/sakuga-chaos" "${chaos_args[@]}"
