#!/usr/bin/env bash
# Shared by make demo and make e2e: grpcurl over mTLS with the operator certificate and a
# bearer token, JSON helpers, and the steps both take. Source after lib.sh, with
# .dev/stack.env loaded.

TLS=(-cacert "$SAKUGA_CA" -cert "$SAKUGA_CLIENT_CERT" -key "$SAKUGA_CLIENT_KEY")

# grpcurl with the request JSON on stdin and the bearer token. The token reaches grpcurl
# through its environment (-expand-headers), never its command line; -H also applies to
# the reflection calls grpcurl makes.
AUTH_HEADER=(-expand-headers -H 'authorization: Bearer ${SAKUGA_DEMO_BEARER}')
call() { # ADDR METHOD [grpcurl flags...]  < request.json
    local addr="$1" method="$2"
    shift 2
    SAKUGA_DEMO_BEARER="${TOKEN:-}" "$SAKUGA_GRPCURL" "${TLS[@]}" "${AUTH_HEADER[@]}" -emit-defaults "$@" \
        -d @ "$addr" "$method"
}

fail_with_logs() {
    local s
    for s in "${SERVICES[@]}"; do
        echo "---- .dev/logs/$s.log (tail)" >&2
        tail -n 15 "$DEV/logs/$s.log" >&2 || true
    done
    die "$*"
}

# grpcurl 1.8.6 prints the proto field names (access_token); newer ones print lowerCamelCase
# (accessToken). The Python snippets below turn every key into snake_case first.
PY_SNAKE='
import json, re, sys
def snake(v):
    if isinstance(v, dict):
        return {re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", k).lower(): snake(x) for k, x in v.items()}
    if isinstance(v, list):
        return [snake(x) for x in v]
    return v
'

# JSON field extraction (python3, no jq): json_get EXPR < json   (EXPR uses d, snake_case keys)
json_get() { python3 -c "$PY_SNAKE"'
d = snake(json.load(sys.stdin))
print(eval(sys.argv[1]))' "$1"; }

# Logs in as the bootstrap admin; sets TOKEN. Checks WhoAmI with and without it.
login_admin() {
    log "Login as admin (password from .dev/admin.password, sent on stdin)"
    TOKEN=""
    local login_out whoami anon
    login_out="$(ADMIN_PASSWORD="$(cat "$DEV/admin.password")" python3 -c '
import json, os
print(json.dumps({"username": "admin", "password": os.environ["ADMIN_PASSWORD"]}))' |
        "$SAKUGA_GRPCURL" "${TLS[@]}" -d @ "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService/Login)" ||
        fail_with_logs "login failed"
    TOKEN="$(printf '%s' "$login_out" | json_get 'd["tokens"]["access_token"]')"
    [ -n "$TOKEN" ] || fail_with_logs "login returned no access token"
    whoami="$(echo '{}' | call "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService/WhoAmI)" || fail_with_logs "WhoAmI failed"
    log "WhoAmI with the token: $(printf '%s' "$whoami" | json_get 'd["user"]["username"] + " (" + d["user"]["role"] + ")"')"
    if anon="$(echo '{}' | "$SAKUGA_GRPCURL" "${TLS[@]}" -d @ "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService/WhoAmI 2>&1)"; then
        fail_with_logs "WhoAmI without a token succeeded: $anon"
    fi
    grep -q Unauthenticated <<<"$anon" || fail_with_logs "WhoAmI without a token: expected Unauthenticated, got: $anon"
    log "WhoAmI without a token: Unauthenticated"
}

# grpcurl list on ADDR must show health, reflection and the given services.
expect_services() { # ADDR SERVICE...
    local addr="$1" listed
    shift
    listed="$(SAKUGA_DEMO_BEARER="$TOKEN" "$SAKUGA_GRPCURL" "${TLS[@]}" "${AUTH_HEADER[@]}" "$addr" list)" ||
        fail_with_logs "grpcurl list $addr failed"
    for want in grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection "$@"; do
        grep -qx "$want" <<<"$listed" || fail_with_logs "$addr does not list $want: $listed"
    done
    printf '  %-16s %s\n' "$addr" "$(grep '^sakuga' <<<"$listed" | paste -sd' ')"
}

# The overall health of ADDR must be SERVING.
expect_serving() { # ADDR
    local health
    health="$(echo '{}' | call "$1" grpc.health.v1.Health/Check)" || fail_with_logs "health check of $1 failed"
    [ "$(printf '%s' "$health" | json_get 'd["status"]')" = SERVING ] || fail_with_logs "$1 not SERVING: $health"
}

# Queues an image job; sets JOB_ID.
submit_image() { # SIZE STEPS BACKEND
    local submit_out
    submit_out="$(python3 -c '
import json, sys, time
size, steps, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(json.dumps({
    "spec": {
        "kind": "JOB_KIND_IMAGE",
        "prompt": "sakura petals drifting over a quiet seaside train station at dusk, anime key visual",
        "width": size, "height": size, "steps": steps, "batchSize": 1, "seed": "20261123",
        "backend": backend,
    },
    "idempotencyKey": "demo-%d" % time.time_ns(),
}))' "$1" "$2" "$3" | call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/SubmitJob)" ||
        fail_with_logs "SubmitJob failed"
    JOB_ID="$(printf '%s' "$submit_out" | json_get 'd["job"]["id"]')"
    [ -n "$JOB_ID" ] || fail_with_logs "SubmitJob returned no job id: $submit_out"
}

# Streams WatchJob until the job ends, printing progress; fails unless at least MIN
# progress events arrived (default 3) and the stream ended with the job succeeded.
watch_job() { # JOB_ID TIMEOUT [MIN]
    local JOB_ID="$1" TIMEOUT="$2" MIN="${3:-3}" rc
    set +e
    printf '{"jobId":"%s"}' "$JOB_ID" |
        call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/WatchJob -max-time "$TIMEOUT" |
        python3 -u -c "$PY_SNAKE"'
dec, buf, progress, status = json.JSONDecoder(), "", 0, "?"
def show(ev):
    global progress, status
    if "progress" in ev:
        p = ev["progress"]
        progress += 1
        print("  step %s/%s %s" % (p.get("step", 0), p.get("total_steps", 0), p.get("stage", "")), flush=True)
    elif "status_change" in ev:
        status = ev["status_change"].get("status", "?")
        err = ev["status_change"].get("error", "")
        print("  status %s%s" % (status, (": " + err) if err else ""), flush=True)
    elif "snapshot" in ev:
        status = ev["snapshot"].get("status", "?")
        print("  snapshot: %s" % status, flush=True)
    elif "preview" in ev:
        pass
while True:
    line = sys.stdin.readline()
    if not line:
        break
    buf += line
    while True:
        s = buf.lstrip()
        if not s:
            buf = ""
            break
        try:
            msg, end = dec.raw_decode(s)
        except ValueError:
            break
        buf = s[end:]
        show(snake(msg).get("event", {}))
print("progress_events=%d" % progress)
sys.exit(0 if progress >= int(sys.argv[1]) and status == "JOB_STATUS_SUCCEEDED" else 3)
' "$MIN"
    rc=("${PIPESTATUS[@]}")
    set -e
    [ "${rc[1]}" -eq 0 ] || fail_with_logs "WatchJob failed (grpcurl exit ${rc[1]})"
    [ "${rc[2]}" -eq 0 ] || fail_with_logs "the job did not succeed, or fewer than $MIN progress events were streamed"
}
