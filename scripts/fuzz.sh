#!/usr/bin/env bash
# The fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, address sanitizer), each on its corpus
# in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh --smoke      every target for FUZZ_SMOKE_SECONDS (default 5) starting from
#                                the corpus, new entries to a scratch folder; fails on a crash
#                                (a step of make test)
#   scripts/fuzz.sh [TARGET...]  make fuzz: each target (default all) for FUZZ_SECONDS (default
#                                300); new corpus entries are kept in fuzz/corpus/<target>/
#
# A crash leaves its input in fuzz/artifacts/<target>/ (git-ignored); replay it with
#   RUSTC_BOOTSTRAP=1 .tools/bin/cargo-fuzz run --target-dir ~/.cache/sakuga/fuzz-target TARGET FILE
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode="long"
if [ "${1:-}" = --smoke ]; then
    mode="smoke"
    shift
fi

bash "$ROOT/scripts/tools.sh" cargo-fuzz >/dev/null
export PATH="$TOOLS_BIN:$PATH"
# cargo-fuzz passes nightly-only flags (-Zsanitizer, the sancov passes); the machines have a
# stable toolchain only, which accepts them with RUSTC_BOOTSTRAP=1. Only this build uses it.
export RUSTC_BOOTSTRAP=1
# Instrumented builds are kept apart from the normal ones, under the cache CI keeps.
unset CARGO_TARGET_DIR
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/sakuga/fuzz-target}"
fuzz=(cargo fuzz)
build_flags=(--release --debug-assertions --target-dir "$target_dir")

cd "$ROOT"
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
log "cargo fuzz build (${targets[*]})"
"${fuzz[@]}" build "${build_flags[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    corpus="$ROOT/fuzz/corpus/$t"
    [ -d "$corpus" ] || die "no corpus for $t in fuzz/corpus/$t"
    if [ "$mode" = smoke ]; then
        secs="${FUZZ_SMOKE_SECONDS:-5}"
        # A fixed seed: the gate in make test replays the same mutations every run (a new
        # crash is found by make fuzz, not by chance in somebody's test run).
        seed=(-seed="${FUZZ_SEED:-1}")
        # The first folder receives new entries: a scratch one, so the run changes nothing.
        dirs=("$scratch/$t" "$corpus")
        mkdir -p "$scratch/$t"
    else
        secs="${FUZZ_SECONDS:-300}"
        seed=()
        dirs=("$corpus")
    fi
    log "fuzz $t for ${secs}s"
    "${fuzz[@]}" run "${build_flags[@]}" "$t" "${dirs[@]}" -- \
        "${seed[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$scratch/$t.log" ||
        {
            grep -m 1 -A 8 -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer' "$scratch/$t.log" >&2 || true
            tail -n 25 "$scratch/$t.log" >&2
            die "fuzz target $t failed; the input is in fuzz/artifacts/$t/"
        }
    grep -E '^(stat::number_of_executed_units|#[0-9]+ *DONE)' "$scratch/$t.log" | tail -n 2 || true
done
log "fuzz targets passed: ${targets[*]}"
