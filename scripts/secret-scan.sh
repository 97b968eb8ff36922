#!/usr/bin/env bash
# Fails when a tracked file holds something that looks like a committed secret: private
# keys, Vault tokens, Sakuga API keys and refresh tokens, JWTs, cloud keys, literal
# passwords. A line that must contain such a shape on purpose carries `secret-scan: allow`.
#
#   scripts/secret-scan.sh            scan the tracked files of this repository
#   scripts/secret-scan.sh DIR        scan every file under DIR (used by the self-test)
#   scripts/secret-scan.sh --self-test   check that the patterns catch planted samples
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PATTERNS=(
    '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----'
    '\bhvs\.[A-Za-z0-9_-]{20,}'
    '\bs\.[A-Za-z0-9]{24}\b'
    '\bsk_[0-9a-f]{8}_[A-Za-z0-9_-]{30,}'
    '\brt_[A-Za-z0-9_-]{40,}'
    'eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}'
    '\bAKIA[0-9A-Z]{16}\b'
    '(password|passwd|secret_id|api_key)[[:space:]]*[:=][[:space:]]*["'"'"'][^"'"'"'$<{[:space:]]{8,}["'"'"']'
)

scan() { # FILE... -> prints findings, returns 1 if any
    local found=0 p
    for p in "${PATTERNS[@]}"; do
        if grep -HnIE -- "$p" "$@" 2>/dev/null | grep -v 'secret-scan: allow'; then
            found=1
        fi
    done
    return "$found"
}

if [ "${1:-}" = --self-test ]; then
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
    # The samples are assembled at run time so this file itself stays clean.
    b='-----BEGIN'
    printf '%s PRIVATE KEY-----\n' "$b" >"$dir/a"
    printf 'token = "hvs.%s"\n' "CAESIabcdefghijklmnopqrstuvwxyz012345" >"$dir/b"
    printf 'key: sk_0a1b2c3d_%s\n' "abcdefghijklmnopqrstuvwxyz0123456789ABCD" >"$dir/c"
    printf 'password = "%s"\n' "hunter2hunter2" >"$dir/d"
    printf 'eyJ%s.eyJ%s.%s\n' "hbGciOiJFZERTQSJ9" "zdWIiOiIxMjM0In0" "c2lnbmF0dXJlc2lnbmF0dXJl" >"$dir/e"
    printf 'nothing to see here\npassword = "${FROM_ENV}"\n' >"$dir/clean"
    for f in a b c d e; do
        scan "$dir/$f" >/dev/null && die "secret scan self-test: the sample in '$f' was not caught"
    done
    scan "$dir/clean" >/dev/null || die "secret scan self-test: a clean file was flagged"
    log "secret scan self-test passed"
    exit 0
fi

if [ -n "${1:-}" ]; then
    mapfile -t files < <(find "$1" -type f)
else
    cd "$ROOT"
    mapfile -t files < <(git ls-files)
fi
[ "${#files[@]}" -gt 0 ] || exit 0
if ! scan "${files[@]}"; then
    die "possible secrets in the files above (mark a deliberate line with 'secret-scan: allow')"
fi
log "secret scan: ${#files[@]} files clean"
