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
# shellcheck source=scripts/grpc.sh
. "$ROOT/scripts/grpc.sh"

login_admin

log "grpcurl list on every port"
expect_services "$SAKUGA_AUTH_ADDR" sakuga.v1.AuthService
expect_services "$SAKUGA_SCHEDULER_ADDR" sakuga.v1.JobService sakuga.v1.ProjectService sakuga.v1.WorkerService
expect_services "$SAKUGA_ORGANIZER_ADDR" sakuga.v1.FileService
expect_services "$SAKUGA_GENERATOR_HEALTH_ADDR"
expect_serving "$SAKUGA_GENERATOR_HEALTH_ADDR"
log "generator health: SERVING"

# With SAKUGA_COMFYUI_URL set, `make up` put the generator on the comfyui backend.
BACKEND=builtin
[ -z "${SAKUGA_COMFYUI_URL:-}" ] || BACKEND=comfyui
log "SubmitJob: ${SIZE}x${SIZE} image, $STEPS steps, backend $BACKEND"
submit_image "$SIZE" "$STEPS" "$BACKEND"
log "job $JOB_ID queued"

log "WatchJob: progress as it arrives"
watch_job "$JOB_ID" "$TIMEOUT"

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
    # stack can look: bytes are stored once under their sha256, <root>/blobs/<sha256>, and
    # the record's name is unsorted/YYYY/MM/DD/<job-id>-<n>.png.
    sha="$(printf '%s' "$file_out" | json_get 'd["file"]["sha256"]')"
    if [ "${SAKUGA_STORAGE:-local}" = s3 ]; then
        # In the bucket: fetched through SeaweedFS's filer, which serves buckets/<bucket>/<key>.
        path="$DEV/weed/demo-$sha.png"
        python3 -c 'import sys, urllib.request; open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1], timeout=10).read())' \
            "http://$LOOPBACK:18888/buckets/sakuga/blobs/$sha" "$path" ||
            fail_with_logs "no object blobs/$sha in the bucket"
    else
        path="$DEV/files/blobs/$sha"
        [ -f "$path" ] || fail_with_logs "no file at .dev/files/blobs/$sha"
    fi
    python3 - "$path" "$SIZE" "$sha" <<'PY' || fail_with_logs "$path does not decode as a ${SIZE}x${SIZE} PNG"
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
print("stored:  blobs/%s (%d bytes, decodes, %dx%d)" % (sys.argv[3], len(data), *size))
PY
done
log "demo passed"
