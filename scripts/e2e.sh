#!/usr/bin/env bash
# make e2e (after make up): the whole mesh with grpcurl alone, over mTLS with the operator
# certificate and a bearer token. Checks, and exits non-zero on any mismatch:
#   list and describe on every port (services, and their documentation);
#   health on every port;
#   refusals: no token -> Unauthenticated, a bad field -> InvalidArgument naming it;
#   SubmitJob from JSON, WatchJob until it ends, GetJob succeeded;
#   ListFiles lists the job's file, ReadFile returns bytes whose sha256 matches GetFile;
#   CreateWebhook registers a receiver on loopback, which gets the job's job.succeeded,
#   signed (verified by the receiver), and ListDeliveries shows it delivered.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ ! -f "$DEV/stack.env" ] || ! recorded_running scheduler; then
    die "the stack is not up: run 'make up' first"
fi
# shellcheck source=/dev/null
. "$DEV/stack.env"
# shellcheck source=scripts/grpc.sh
. "$ROOT/scripts/grpc.sh"

login_admin

log "list, describe and health on every port"
expect_services "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService
expect_services "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService sakuga.v1.ProjectService sakuga.v1.WebhookService \
    sakuga.v1.WorkerService
expect_services "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService
expect_services "$SAKUGA_GENERATOR_HEALTH_ADDR"
expect_described() { # ADDR SYMBOL TEXT: `grpcurl describe SYMBOL` shows TEXT (its documentation)
    local out
    out="$(SAKUGA_DEMO_BEARER="$TOKEN" "$SAKUGA_GRPCURL" "${TLS[@]}" "${AUTH_HEADER[@]}" "$1" describe "$2")" ||
        fail_with_logs "grpcurl describe $2 on $1 failed"
    grep -qF "$3" <<<"$out" || fail_with_logs "describe $2 on $1 lacks \"$3\": $out"
}
expect_described "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService.Login "UNAUTHENTICATED for a wrong user or password"
expect_described "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService.SubmitJob "INVALID_ARGUMENT names the offending field"
expect_described "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobSpec "multiple of 8"
expect_described "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.ProjectService.CreateProject "slug"
expect_described "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService.ReadFile "optionally a byte range"
expect_described "$SAKUGA_GENERATOR_HEALTH_ADDR" grpc.health.v1.Health.Check "rpc Check"
for addr in "$SAKUGA_AUTH_ADDR" "$SAKUGA_SCHEDULER_ADDR" "$SAKUGA_ORGANIZER_ADDR" "$SAKUGA_GENERATOR_HEALTH_ADDR"; do
    expect_serving "$addr"
done
log "  every port lists, describes and is SERVING"

log "refusals"
refused() { # EXPECTED-CODE TEXT OUTPUT
    grep -q "$1" <<<"$3" || fail_with_logs "expected $1, got: $3"
    grep -qF "$2" <<<"$3" || fail_with_logs "the refusal does not say \"$2\": $3"
}
if out="$(echo '{}' | "$SAKUGA_GRPCURL" "${TLS[@]}" -d @ "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/ListJobs 2>&1)"; then
    fail_with_logs "ListJobs without a token succeeded: $out"
fi
refused Unauthenticated "" "$out"
if out="$(echo '{"spec":{"kind":"JOB_KIND_IMAGE","prompt":"x","width":65,"height":64,"steps":4}}' |
    call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/SubmitJob 2>&1)"; then
    fail_with_logs "a 65-pixel-wide job was accepted: $out"
fi
refused InvalidArgument "spec.width" "$out"
log "  no token: Unauthenticated; width 65: InvalidArgument naming spec.width"

log "a webhook receiver on loopback, registered with CreateWebhook"
HOOK_DIR="$(mktemp -d)"
HOOK_LOG="$HOOK_DIR/received.jsonl"
HOOK_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 "$ROOT/scripts/webhook_receiver.py" "$HOOK_PORT" "$HOOK_LOG" &
HOOK_PID=$!
trap 'kill "$HOOK_PID" 2>/dev/null || true; rm -rf "$HOOK_DIR"' EXIT
hook_out="$(printf '{"url":"http://127.0.0.1:%s/hook","events":["job.succeeded"],"description":"make e2e"}' "$HOOK_PORT" |
    call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.WebhookService/CreateWebhook)" || fail_with_logs "CreateWebhook failed"
HOOK_ID="$(printf '%s' "$hook_out" | json_get 'd["webhook"]["id"]')"
# The secret is shown once; the receiver reads it from a file only it and we can read.
(umask 077 && printf '%s' "$hook_out" | json_get 'd["secret"]' >"$HOOK_LOG.secret")
log "  endpoint $HOOK_ID -> 127.0.0.1:$HOOK_PORT"

log "one job: SubmitJob, WatchJob, GetJob"
submit_image 512 40 builtin
log "  job $JOB_ID"
# A fast machine may finish the job before the stream opens: then the stream is one
# snapshot of the finished job, which is enough here.
watch_job "$JOB_ID" 120 0
job_out="$(printf '{"jobId":"%s"}' "$JOB_ID" | call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService/GetJob)" ||
    fail_with_logs "GetJob failed"
[ "$(printf '%s' "$job_out" | json_get 'd["job"]["status"]')" = JOB_STATUS_SUCCEEDED ] ||
    fail_with_logs "the job did not succeed: $job_out"
FILE_ID="$(printf '%s' "$job_out" | json_get 'd["job"]["file_ids"][0]')"

log "ListFiles, GetFile, ReadFile"
files_out="$(printf '{"jobId":"%s"}' "$JOB_ID" | call "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService/ListFiles)" ||
    fail_with_logs "ListFiles failed"
[ "$(printf '%s' "$files_out" | json_get '",".join(f["id"] for f in d["files"])')" = "$FILE_ID" ] ||
    fail_with_logs "ListFiles does not list exactly the job's file: $files_out"
file_out="$(printf '{"fileId":"%s"}' "$FILE_ID" | call "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService/GetFile)" ||
    fail_with_logs "GetFile failed"
SHA="$(printf '%s' "$file_out" | json_get 'd["file"]["sha256"]')"
SIZE="$(printf '%s' "$file_out" | json_get 'd["file"]["size_bytes"]')"
printf '{"fileId":"%s"}' "$FILE_ID" | call "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService/ReadFile |
    python3 -c "$PY_SNAKE"'
import base64, hashlib
dec, text, data = json.JSONDecoder(), sys.stdin.read(), b""
while text.strip():
    msg, end = dec.raw_decode(text.lstrip())
    text = text.lstrip()[end:]
    data += base64.b64decode(snake(msg).get("chunk", ""))
want_sha, want_size = sys.argv[1], int(sys.argv[2])
got = hashlib.sha256(data).hexdigest()
assert len(data) == want_size, "read %d bytes, the record says %d" % (len(data), want_size)
assert got == want_sha, "sha256 %s, the record says %s" % (got, want_sha)
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
print("  ReadFile: %d bytes, sha256 matches the record" % len(data))
' "$SHA" "$SIZE" || fail_with_logs "ReadFile returned other bytes than the record describes"
log "the job's webhook: signed, delivered, listed"
for _ in $(seq 1 300); do
    grep -qF "\"$JOB_ID\"" "$HOOK_LOG" 2>/dev/null && break
    sleep 0.2
done
python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
mine = [l for l in lines if l["job_id"] == sys.argv[2]]
assert mine, "no webhook for job %s: %s" % (sys.argv[2], lines)
assert all(l["type"] == "job.succeeded" and l["status"] == "JOB_STATUS_SUCCEEDED" for l in mine), mine
assert all(l["verified"] for l in mine), "a signature did not verify: %s" % mine
print("  job.succeeded received, signature verified (webhook-id %s)" % mine[0]["id"])
' "$HOOK_LOG" "$JOB_ID" || fail_with_logs "the job's webhook did not arrive signed"
deliveries="$(printf '{"webhookId":"%s","jobId":"%s"}' "$HOOK_ID" "$JOB_ID" |
    call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.WebhookService/ListDeliveries)" || fail_with_logs "ListDeliveries failed"
[ "$(printf '%s' "$deliveries" | json_get 'd["deliveries"][0]["state"]')" = DELIVERY_STATE_DELIVERED ] ||
    fail_with_logs "ListDeliveries does not show the delivery delivered: $deliveries"
printf '{"webhookId":"%s"}' "$HOOK_ID" | call "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.WebhookService/DeleteWebhook >/dev/null ||
    fail_with_logs "DeleteWebhook failed"
log "  ListDeliveries: delivered; endpoint deleted"
log "e2e passed"
