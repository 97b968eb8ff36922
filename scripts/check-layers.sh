#!/usr/bin/env bash
# Layer checks, run by make lint:
#   - the rules of scripts/check_layers.py: in a service only api/ and convert.rs name the
#     wire types (sakuga_proto); no Rust file of crates/ or services/ past 600 lines (tests,
#     benches and fuzz aside); no import cycle between the modules of a crate;
#   - the sakuga CLI links none of the server-side stacks (Vault, PostgreSQL, Redis,
#     OpenTelemetry): it depends on sakuga-mesh without the mesh's `server` feature.
#
#   scripts/check-layers.sh              check this repository
#   scripts/check-layers.sh --self-test  check that each rule fails on a planted violation
#                                        and passes once it is gone
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SERVER_CRATES='vaultrs|postgres|redis|opentelemetry'

# The normal dependencies of PACKAGE that belong to the server side; prints them.
server_crates_of() { # PACKAGE
    local tree
    tree="$(cd "$ROOT" && cargo tree -p "$1" -e normal)" || die "cargo tree -p $1 failed"
    grep -E "$SERVER_CRATES" <<<"$tree"
}

if [ "${1:-}" = --self-test ]; then
    dir="$(mktemp -d)"
    trap 'rm -rf "$dir"' EXIT
    mkdir -p "$dir/crates/demo/src/n" "$dir/services/demo/src/api" "$dir/services/demo/tests"
    # Two cycles: a -> b -> a, and n::x -> n::y -> c -> n::x (through super::, crate:: and a
    # re-export). Also what must not count: a parent re-exporting its children, test code,
    # and paths inside comments and strings.
    cat >"$dir/crates/demo/src/lib.rs" <<'EOF'
mod a;
mod b;
mod c;
mod n;
pub use a::A;
pub use b::B;
#[cfg(test)]
mod tests {
    use crate::{a::A, c::C};
}
EOF
    printf 'use crate::b::B;\npub struct A;\n' >"$dir/crates/demo/src/a.rs"
    printf 'use crate::a::A;\npub struct B;\n' >"$dir/crates/demo/src/b.rs"
    cat >"$dir/crates/demo/src/c.rs" <<'EOF'
//! Names crate::a::A in a comment only.
use crate::B;
use crate::n::X;
pub struct C;
pub const TEXT: &str = "use crate::lib::D;";
#[cfg(test)]
mod tests {
    use crate::c::C;
}
EOF
    printf 'mod x;\nmod y;\npub use x::X;\n' >"$dir/crates/demo/src/n/mod.rs"
    printf 'use super::y::Y;\npub struct X;\n' >"$dir/crates/demo/src/n/x.rs"
    printf 'pub struct Y;\nfn f() {\n    let _ = crate::c::C;\n}\n' >"$dir/crates/demo/src/n/y.rs"
    # A domain module naming the wire types; the api module and the tests may.
    printf 'mod api;\nmod dispatch;\n' >"$dir/services/demo/src/lib.rs"
    printf 'use sakuga_proto::v1::Job;\n' >"$dir/services/demo/src/api/jobs.rs"
    printf 'pub fn run() {\n    let _job = sakuga_proto::v1::Job::default();\n}\n' \
        >"$dir/services/demo/src/dispatch.rs"
    # A file past the limit; the same length under tests/ is fine.
    for _ in $(seq 601); do echo "// line"; done >"$dir/crates/demo/src/long.rs"
    for _ in $(seq 700); do echo "// sakuga_proto"; done >"$dir/services/demo/tests/long.rs"

    out="$(python3 "$ROOT/scripts/check_layers.py" "$dir")" &&
        die "check-layers self-test: the planted violations passed"
    printf '%s\n' "$out" | sed 's/^/    /'
    expect() { # TEXT
        grep -qF -- "$1" <<<"$out" || die "check-layers self-test: no finding containing '$1'"
    }
    expect "services/demo/src/dispatch.rs:2: names sakuga_proto"
    expect "crates/demo/src/long.rs: 601 lines"
    expect "import cycle between modules of crates/demo (lib.rs): crates/demo/src/a.rs -> crates/demo/src/b.rs -> crates/demo/src/a.rs"
    expect "import cycle between modules of crates/demo (lib.rs): crates/demo/src/c.rs -> crates/demo/src/n/x.rs -> crates/demo/src/n/y.rs -> crates/demo/src/c.rs"
    [ "$(grep -v '^check-layers: note:' <<<"$out" | grep -c '^check-layers: ')" -eq 4 ] ||
        die "check-layers self-test: expected exactly 4 findings"

    # Without the violations the same tree passes.
    printf 'pub struct A;\n' >"$dir/crates/demo/src/a.rs"
    printf 'pub struct Y;\n' >"$dir/crates/demo/src/n/y.rs"
    printf 'pub fn run() {}\n' >"$dir/services/demo/src/dispatch.rs"
    rm "$dir/crates/demo/src/long.rs"
    out="$(python3 "$ROOT/scripts/check_layers.py" "$dir")" ||
        die "check-layers self-test: a clean tree failed: $out"

    # The dependency check: sakuga-mesh with its default features links what the CLI must
    # not, so the grep has to find it there.
    server_crates_of sakuga-mesh >/dev/null ||
        die "check-layers self-test: no server-side crate found in sakuga-mesh's own tree"
    log "check-layers self-test passed"
    exit 0
fi

failed=0
python3 "$ROOT/scripts/check_layers.py" "$ROOT" || failed=1
if found="$(server_crates_of sakuga-cli)"; then
    echo "check-layers: crates/cli/Cargo.toml: the sakuga CLI links server-side crates; depend on sakuga-mesh without its \"server\" feature:" >&2
    printf '%s\n' "$found" >&2
    failed=1
fi
[ "$failed" -eq 0 ] || die "layer check failed (see the findings above)"
log "layers clean"
