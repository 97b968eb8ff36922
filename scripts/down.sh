#!/usr/bin/env bash
# Stops exactly what .dev/pids lists (services first, then OpenBao, then a Redis or
# PostgreSQL that we started), removes the Redis ACL user `make up` created, and removes
# .dev/pids. A PostgreSQL or Redis that was already running is left alone.
#
#   SAKUGA_STOP_TIMEOUT=15   seconds to wait after TERM before KILL
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STOP_TIMEOUT="${SAKUGA_STOP_TIMEOUT:-15}"

stop_pid() { # NAME PID
    local name="$1" pid="$2" i
    if ! pid_is "$name" "$pid"; then
        log "$name (pid $pid) is not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    # SeaweedFS takes its time over a graceful stop and holds nothing the stack needs.
    local wait_secs="$STOP_TIMEOUT"
    [ "$name" != weed ] || wait_secs=3
    for ((i = 0; i < wait_secs * 5; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    warn "$name (pid $pid) still running after ${wait_secs}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    warn "$name (pid $pid) survived KILL"
    return 1
}

stop_entry() { # NAME PID [HOW]
    local name="$1" pid="$2" how="${3:-}"
    if [[ "$how" == pg:* ]]; then
        local vc="${how#pg:}"
        if pid_is postgres "$pid" || pid_alive "$pid"; then
            log "stopping the PostgreSQL cluster ${vc%/*}/${vc#*/} we started"
            as_root pg_ctlcluster --skip-systemctl-redirect "${vc%/*}" "${vc#*/}" stop -m fast ||
                stop_pid postgres "$pid"
        else
            log "PostgreSQL cluster $vc (pid $pid) is not running"
        fi
        return 0
    fi
    stop_pid "$name" "$pid"
}

remove_redis_user() {
    local marker="$DEV/run/redis-acl" host port user out
    [ -f "$marker" ] || return 0
    read -r host port user <"$marker" || true
    if [ -n "${port:-}" ] && command -v redis-cli >/dev/null 2>&1; then
        out="$(printf 'ACL DELUSER %s\n' "${user:-$APP_REDIS_USER}" |
            env -u REDISCLI_AUTH redis-cli -h "${host:-$LOOPBACK}" -p "$port" 2>&1 || true)"
        case "$out" in
        [0-9]*) log "removed the Redis ACL users ${user:-$APP_REDIS_USER} on $host:$port" ;;
        *) warn "could not remove the Redis ACL users on $host:$port: $out" ;;
        esac
    fi
    rm -f "$marker"
}

if [ ! -f "$PIDS" ]; then
    remove_redis_user
    log "nothing to stop (no .dev/pids)"
    exit 0
fi

mapfile -t entries < <(tac "$PIDS")
failed=0
# Services first (newest first: generator before organizer, scheduler, auth) ...
for e in "${entries[@]}"; do
    read -r name pid how <<<"$e"
    case "$name" in bao | redis | postgres | weed | "") continue ;; esac
    stop_entry "$name" "$pid" "$how" || failed=1
done
# ... then the Redis user they were using, then the infrastructure.
remove_redis_user
for e in "${entries[@]}"; do
    read -r name pid how <<<"$e"
    case "$name" in bao | redis | postgres | weed) stop_entry "$name" "$pid" "$how" || failed=1 ;; esac
done
rm -f "$PIDS" "$DEV/run/redis.pid" "$DEV/stack.env"
[ "$failed" -eq 0 ] || die "some processes could not be stopped"
log "stopped"
