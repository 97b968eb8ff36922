#!/usr/bin/env bash
# make test: pinned tools, PostgreSQL and Redis (running ones, or started), the test role,
# the lint checks (rustfmt, clippy -D warnings, buf lint, buf format), then the test suite
# (cargo nextest when installed, else cargo test) against one OpenBao dev server started
# here for the whole run and stopped at the end, then a short run of every fuzz target. (Run by hand without SAKUGA_TEST_VAULT_*,
# each test process starts its own from SAKUGA_BAO_BIN.)
#
#   scripts/test.sh --env     only prepare, and print the exports for running tests by hand
#   SAKUGA_TEST_ARGS="..."    extra arguments for nextest / cargo test (e.g. a filter)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode="run"
if [ "${1:-}" = --env ]; then mode="env"; fi

prepare() {
    bash "$ROOT/scripts/tools.sh"
    # promtool (Debian's prometheus package) lints every service's /metrics in the tests.
    command -v promtool >/dev/null 2>&1 || apt_install prometheus
    ensure_postgres
    ensure_redis
    ensure_test_db_role
}
if [ "$mode" = env ]; then
    prepare >&2
else
    prepare
fi

export SAKUGA_BAO_BIN="$TOOLS_BIN/bao"
export SAKUGA_GRPCURL_BIN="$TOOLS_BIN/grpcurl"
export SAKUGA_WEED_BIN="$TOOLS_BIN/weed"
SAKUGA_PROMTOOL_BIN="$(command -v promtool)"
export SAKUGA_PROMTOOL_BIN
SAKUGA_TEST_DATABASE_URL="$(test_database_url)"
export SAKUGA_TEST_DATABASE_URL
export SAKUGA_TEST_REDIS_URL="redis://$LOOPBACK:$REDIS_PORT"

if [ "$mode" = env ]; then
    for v in SAKUGA_BAO_BIN SAKUGA_GRPCURL_BIN SAKUGA_WEED_BIN SAKUGA_PROMTOOL_BIN SAKUGA_TEST_DATABASE_URL SAKUGA_TEST_REDIS_URL CARGO_TARGET_DIR; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

cd "$ROOT"
bash "$ROOT/scripts/lint.sh"

start_test_bao
log "test OpenBao dev server on $SAKUGA_TEST_VAULT_ADDR"

# shellcheck disable=SC2086 # SAKUGA_TEST_ARGS is split on purpose
if cargo nextest --version >/dev/null 2>&1; then
    log "cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast ${SAKUGA_TEST_ARGS:-}
else
    log "cargo test --workspace (cargo-nextest is not installed)"
    cargo test --workspace --no-fail-fast ${SAKUGA_TEST_ARGS:-}
fi

log "fuzz targets, a few seconds each"
bash "$ROOT/scripts/fuzz.sh" --smoke
