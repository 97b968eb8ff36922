#!/usr/bin/env bash
# make migrate: applies the migrations to the running stack's database as the role that owns
# the tables (the migrator's OpenBao login, .dev/config/migrate.toml written by make up). The
# services' own database roles cannot change the schema; make up migrates before starting
# them, and this is for checking migrations without restarting them.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

recorded_running bao || die "OpenBao of the local stack is not running: run 'make up' first"
[ -f "$DEV/config/migrate.toml" ] || die "missing .dev/config/migrate.toml: run 'make up' first"
log "sakuga-auth migrate (as the owner role)"
(cd "$ROOT" && exec_clean "SAKUGA_AUTH__" "$BIN_DIR/sakuga-auth" --config "$DEV/config/migrate.toml" migrate)
