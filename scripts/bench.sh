#!/usr/bin/env bash
# make bench: the dispatch and backend benchmarks (release build) against real PostgreSQL, Redis and a
# fresh OpenBao dev server, as the tests use them. Prints a Markdown table; the latest
# figures and the method are kept in benches/RESULTS.md.
#   BENCH_JOBS=2000 BENCH_WORKERS=8 BENCH_SLOTS=8 BENCH_CLIENTS=16
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$ROOT/scripts/tools.sh"
ensure_postgres
ensure_redis
ensure_test_db_role
export SAKUGA_BAO_BIN="$TOOLS_BIN/bao"
SAKUGA_TEST_DATABASE_URL="$(test_database_url)"
export SAKUGA_TEST_DATABASE_URL
export SAKUGA_TEST_REDIS_URL="redis://$LOOPBACK:$REDIS_PORT"
start_test_bao
cd "$ROOT"
cargo bench -p sakuga-benches --bench dispatch
# Backends need no database: builtin render cost and the ComfyUI backend's own overhead.
cargo bench -p sakuga-benches --bench backends
