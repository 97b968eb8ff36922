#!/usr/bin/env bash
# make bench: the load harness, the backend benchmarks and the criterion micro-benchmarks, in
# release builds, against real PostgreSQL, Redis and a fresh OpenBao dev server, as the tests
# use them. Writes .dev/bench/report.json and report.md (the load harness) and prints every
# table; benches/RESULTS.md keeps the latest figures with the method. Before the load harness
# it runs the peer, graphile-worker 0.18.0 (benches/peers/graphile, installed from npm into
# ~/.cache/peers-node), on the same PostgreSQL, and the report sets both side by side.
#
#   BENCH_SECTIONS=rpc,dispatch,concurrency,fanout,store,processes  (see benches/benches/load/main.rs
#   for every BENCH_* setting)   BENCH_SKIP_MICRO=1   BENCH_SKIP_BACKENDS=1
#   BENCH_SKIP_PEER=1 (no npm registry, or no comparison wanted)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started=$SECONDS
bash "$ROOT/scripts/tools.sh"
ensure_postgres
ensure_redis
ensure_test_db_role
export SAKUGA_BAO_BIN="$TOOLS_BIN/bao"
# The store section's S3 backend: a SeaweedFS on loopback, free ports.
export SAKUGA_WEED_BIN="$TOOLS_BIN/weed"
SAKUGA_TEST_DATABASE_URL="$(test_database_url)"
export SAKUGA_TEST_DATABASE_URL
export SAKUGA_TEST_REDIS_URL="redis://$LOOPBACK:$REDIS_PORT"
start_test_bao
cd "$ROOT"

log "cargo build --release (services, benchmarks)"
cargo build --release -q --bins -p sakuga-auth -p sakuga-scheduler -p sakuga-organizer -p sakuga-generator
cargo bench -q -p sakuga-benches --no-run 2>/dev/null
built=$SECONDS

# What the figures ran on, beside them in the report.
BENCH_META="$(
    python3 - "$(rustc -V)" "$(pg_admin -Atc 'SHOW server_version' 2>/dev/null || echo unknown)" \
        "$(redis_admin INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')" \
        "$("$TOOLS_BIN/bao" version 2>/dev/null | head -n 1)" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+changes')" \
        "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")" "$(uname -r)" <<'PY'
import json, sys
keys = ["rustc", "postgresql", "redis", "openbao", "commit", "os", "kernel"]
print(json.dumps(dict(zip(keys, sys.argv[1:]))))
PY
)"
export BENCH_META
export BENCH_OUT="${BENCH_OUT:-$DEV/bench}"
export BENCH_BIN_DIR="$CARGO_TARGET_DIR/release"

mkdir -p "$BENCH_OUT"
if [ "${BENCH_SKIP_PEER:-0}" != 1 ]; then
    command -v npm >/dev/null 2>&1 ||
        die "the peer (graphile-worker) needs npm: apt-get install npm, or BENCH_SKIP_PEER=1 to leave it out"
    log "peer: graphile-worker on the same PostgreSQL (benches/peers/graphile; about 3 minutes; BENCH_SKIP_PEER=1 leaves it out)"
    # pg_checkpoint: the peer checkpoints before each drain, as it does as a superuser.
    pg_admin <<SQL
SELECT format('CREATE DATABASE %I OWNER %I', 'sakuga_peerbench', '$TEST_DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'sakuga_peerbench') \gexec
SELECT format('GRANT pg_checkpoint TO %I', '$TEST_DB_USER')
 WHERE EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_checkpoint') \gexec
SQL
    PEERBENCH_DATABASE_URL="postgres://$TEST_DB_USER:$(cat "$DEV/test/db-password")@$LOOPBACK:$PG_PORT/sakuga_peerbench" \
        bash "$ROOT/benches/peers/graphile/run.sh" --no-setup --json-out "$BENCH_OUT/peer-graphile.json" \
        >"$BENCH_OUT/peer-graphile.log" 2>&1 ||
        die "the peer failed (log: $BENCH_OUT/peer-graphile.log, last lines: $(tail -n 5 "$BENCH_OUT/peer-graphile.log"))"
    grep -E '^# (latency|throughput|baseline)' "$BENCH_OUT/peer-graphile.log" || true
    export BENCH_PEER_JSON="$BENCH_OUT/peer-graphile.json"
    # The peer's hundreds of thousands of jobs leave dirty pages behind: flushed now, not by
    # a checkpoint in the middle of the next measurement.
    pg_admin -c 'CHECKPOINT' >/dev/null
fi

log "load harness (benches/benches/load)"
cargo bench -q -p sakuga-benches --bench load
if [ "${BENCH_SKIP_BACKENDS:-0}" != 1 ]; then
    log "generator backends (benches/benches/backends.rs)"
    cargo bench -q -p sakuga-benches --bench backends
fi
if [ "${BENCH_SKIP_MICRO:-0}" != 1 ]; then
    log "criterion micro-benchmarks (benches/benches/micro.rs)"
    cargo bench -q -p sakuga-benches --bench micro -- --warm-up-time 1 --measurement-time 3 --noplot
fi
log "make bench: $((SECONDS - built)) s measuring, $((built - started)) s building and setting up; report in $BENCH_OUT"
