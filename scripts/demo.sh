#!/usr/bin/env bash
# make demo (after make up): with grpcurl only, over mTLS with the operator certificate,
# log in as the bootstrap admin (password from .dev/admin.password), show WhoAmI with and
# without the token, look at the mesh as an operator does (list on every port, health),
# submit one image job,
# stream its progress as it happens, then show the final job and the stored file, and check
# the PNG on disk. Fails unless the job SUCCEEDED after at least 3 progress events.
#
#   SAKUGA_DEMO_STEPS=40   SAKUGA_DEMO_SIZE=768   SAKUGA_DEMO_TIMEOUT=300 (seconds)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ ! -f "$DEV/stack.env" ] || ! recorded_running scheduler; then
    die "the stack is not up: run 'make up' first"
fi
# shellcheck source=/dev/null
. "$DEV/stack.env"

STEPS="${SAKUGA_DEMO_STEPS:-40}"
SIZE="${SAKUGA_DEMO_SIZE:-768}"
TIMEOUT="${SAKUGA_DEMO_TIMEOUT:-300}"
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

# ---------------------------------------------------------------------------- login

log "Login as admin (password from .dev/admin.password, sent on stdin)"
TOKEN=""
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

# ---------------------------------------------------------------------------- the mesh

log "grpcurl list on every port"
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
expect_services "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService
expect_services "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService sakuga.v1.WorkerService
expect_services "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService
expect_services "$SAKUGA_GENERATOR_HEALTH_ADDR"
health="$(echo '{}' | call "$SAKUGA_GENERATOR_HEALTH_ADDR" grpc.health.v1.Health/Check)" ||
    fail_with_logs "generator health check failed"
[ "$(printf '%s' "$health" | json_get 'd["status"]')" = SERVING ] || fail_with_logs "generator not SERVING: $health"
log "generator health: SERVING"

# ---------------------------------------------------------------------------- submit

# With SAKUGA_COMFYUI_URL set, `make up` put the generator on the comfyui backend.
BACKEND=builtin
[ -z "${SAKUGA_COMFYUI_URL:-}" ] || BACKEND=comfyui
log "SubmitJob: ${SIZE}x${SIZE} image, $STEPS steps, backend $BACKEND"
submit_out="$(python3 -c '
import json, sys, time
steps, size, backend = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print(json.dumps({
    "spec": {
        "kind": "JOB_KIND_IMAGE",
        "prompt": "sakura petals drifting over a quiet seaside train station at dusk, anime key visual",
        "width": size, "height": size, "steps": steps, "batchSize": 1, "seed": "20261123",
        "backend": backend,
    },
    "idempotencyKey": "demo-%d" % time.time_ns(),
}))' "$STEPS" "$SIZE" "$BACKEND" | call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/SubmitJob)" ||
    fail_with_logs "SubmitJob failed"
JOB_ID="$(printf '%s' "$submit_out" | json_get 'd["job"]["id"]')"
log "job $JOB_ID queued"

# ---------------------------------------------------------------------------- watch

log "WatchJob: progress as it arrives"
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
sys.exit(0 if progress >= 3 else 3)
'
rc=("${PIPESTATUS[@]}")
set -e
[ "${rc[1]}" -eq 0 ] || fail_with_logs "WatchJob failed (grpcurl exit ${rc[1]})"
[ "${rc[2]}" -eq 0 ] || fail_with_logs "fewer than 3 progress events were streamed"

# ---------------------------------------------------------------------------- result

job_out="$(printf '{"jobId":"%s"}' "$JOB_ID" | call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/GetJob)" ||
    fail_with_logs "GetJob failed"
STATUS="$(printf '%s' "$job_out" | json_get 'd["job"]["status"]')"
FILE_IDS="$(printf '%s' "$job_out" | json_get '" ".join(d["job"].get("file_ids", []))')"
echo
echo "job id:  $JOB_ID"
echo "status:  $STATUS"
[ "$STATUS" = JOB_STATUS_SUCCEEDED ] ||
    fail_with_logs "job ended $STATUS: $(printf '%s' "$job_out" | json_get 'd["job"].get("error", "")')"
[ -n "$FILE_IDS" ] || fail_with_logs "the job succeeded but lists no files"
for f in $FILE_IDS; do
    file_out="$(printf '{"fileId":"%s"}' "$f" | call "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService/GetFile)" ||
        fail_with_logs "GetFile $f failed"
    printf '%s' "$file_out" | python3 -c "$PY_SNAKE"'
f = snake(json.load(sys.stdin))["file"]
print("file:    %s  %s bytes  %s %sx%s  sha256 %s" % (f["id"], f.get("size_bytes", "?"),
      f.get("mime_type", "?"), f.get("width", "?"), f.get("height", "?"), f.get("sha256", "")[:16]))
'
    # The organizer never tells clients where a file lives; the operator of this local
    # stack can look: <root>/unsorted/YYYY/MM/DD/<job-id>-<n>.png
    name="$(printf '%s' "$file_out" | json_get 'd["file"]["name"]')"
    path="$DEV/files/unsorted/$name"
    [ -f "$path" ] || fail_with_logs "no file at .dev/files/unsorted/$name"
    python3 - "$path" "$SIZE" <<'PY' || fail_with_logs "$path does not decode as a ${SIZE}x${SIZE} PNG"
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
pos, idat, size = 8, b"", None
while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
        size = struct.unpack(">II", body[:8])
    elif kind == b"IDAT":
        idat += body
    elif kind == b"IEND":
        break
    pos += 12 + length
want = int(sys.argv[2])
assert size == (want, want), size
zlib.decompress(idat)
print("on disk: .dev/files/unsorted/%s (%d bytes, decodes, %dx%d)" % (sys.argv[1].split("/unsorted/")[1], len(data), *size))
PY
done
log "demo passed"
