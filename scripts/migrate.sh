#!/usr/bin/env bash
# make migrate: runs `migrate` of auth, scheduler and organizer with the configs of the
# running stack (they read the database credentials from its OpenBao). The services also
# migrate at start-up; this is for checking migrations without restarting them.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

recorded_running bao || die "OpenBao of the local stack is not running: run 'make up' first"
for s in auth scheduler organizer; do
    [ -f "$DEV/config/$s.toml" ] || die "missing .dev/config/$s.toml: run 'make up' first"
    log "sakuga-$s migrate"
    (cd "$ROOT" && exec_clean "SAKUGA_${s^^}__" "$BIN_DIR/sakuga-$s" --config "$DEV/config/$s.toml" migrate)
done
