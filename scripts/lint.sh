#!/usr/bin/env bash
# make lint: rustfmt --check, clippy -D warnings (the workspace, and the CLI alone, whose
# sakuga-mesh has no server feature), unused dependencies (cargo-machete), the layer checks
# (scripts/check-layers.sh, with its self-test), buf lint, buf format --diff, buf breaking
# against main once a version is tagged, the secret scan (with its self-test). Runs every
# check and fails at the end if any failed.  scripts/lint.sh --fix formats in place instead
# (make fmt).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$ROOT/scripts/tools.sh" >/dev/null
cd "$ROOT"
BUF_DIR="$(buf_dir)"

if [ "${1:-}" = --fix ]; then
    log "cargo fmt --all"
    cargo fmt --all
    log "buf format -w"
    (cd "$BUF_DIR" && "$TOOLS_BIN/buf" format -w)
    exit 0
fi

failed=()
check() { # NAME COMMAND...
    local name="$1"
    shift
    log "$name"
    "$@" || failed+=("$name")
}

check "cargo fmt --check" cargo fmt --all -- --check
check "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# Features unify across the workspace, so only a build of the CLI alone compiles sakuga-mesh
# without its server feature.
check "cargo clippy -p sakuga-cli (sakuga-mesh without server)" cargo clippy -p sakuga-cli -- -D warnings
bash "$ROOT/scripts/tools.sh" cargo-machete >/dev/null
check "cargo machete (unused dependencies)" "$TOOLS_BIN/cargo-machete" "$ROOT"
check "layer check self-test" bash "$ROOT/scripts/check-layers.sh" --self-test
check "layer check" bash "$ROOT/scripts/check-layers.sh"
buf() { (cd "$BUF_DIR" && "$TOOLS_BIN/buf" "$@"); }
check "buf lint" buf lint
check "buf format" buf format -d --exit-code
# Once a version is tagged, the API must not break against main's protos.
if [ -n "$(git -C "$ROOT" tag -l 'v*' 2>/dev/null)" ] && git -C "$ROOT" rev-parse -q --verify main >/dev/null; then
    check "buf breaking (against main)" buf breaking --against "$ROOT/.git#branch=main,subdir=$(realpath --relative-to="$ROOT" "$BUF_DIR")"
else
    log "buf breaking: skipped until a version is tagged (git tag v…)"
fi
check "deploy/k8s (kubernetes-validate, kubectl kustomize, policy)" bash "$ROOT/scripts/k8s-check.sh"
check "secret scan self-test" bash "$ROOT/scripts/secret-scan.sh" --self-test
check "secret scan" bash "$ROOT/scripts/secret-scan.sh"

if [ "${#failed[@]}" -gt 0 ]; then
    die "failed: ${failed[*]}"
fi
log "lint clean"
