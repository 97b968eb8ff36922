#!/usr/bin/env bash
# Starts the local Sakuga stack: PostgreSQL and Redis (used if running, else started), an
# OpenBao dev server seeded with the secrets, PKI and AppRoles, then the four services.
# Everything it writes lives in .dev/ (git-ignored); `make down` stops what it started.
#
#   SAKUGA_SKIP_BUILD=1        do not run cargo build (use binaries already in $BIN_DIR)
#   SAKUGA_KEEP_ON_FAILURE=1   leave what was started running when a step fails
#   SAKUGA_UP_TIMEOUT=60       seconds to wait for each service to report SERVING
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

umask 077
# Tokens from the caller's shell must not reach our bao calls or the services.
unset BAO_TOKEN VAULT_TOKEN BAO_NAMESPACE VAULT_NAMESPACE BAO_DEV_ROOT_TOKEN_ID VAULT_DEV_ROOT_TOKEN_ID

UP_TIMEOUT="${SAKUGA_UP_TIMEOUT:-60}"
BAO="$TOOLS_BIN/bao"
GRPCURL="$TOOLS_BIN/grpcurl"
ROOT_TOKEN=""

# ---------------------------------------------------------------------------- already up?

stack_names=(bao "${SERVICES[@]}")
running=0
for n in "${stack_names[@]}"; do
    recorded_running "$n" && running=$((running + 1))
done
if [ "$running" -eq "${#stack_names[@]}" ]; then
    log "the stack is already up (pids in .dev/pids, addresses in .dev/stack.env); 'make down' stops it"
    exit 0
fi
if [ "$running" -gt 0 ]; then
    log "a partial stack is running; stopping it first"
    bash "$ROOT/scripts/down.sh"
fi
# Entries of processes that are gone would confuse down.sh later: keep only live ones.
if [ -f "$PIDS" ]; then
    while read -r name pid how; do
        pid_is "$name" "$pid" && echo "$name $pid${how:+ $how}"
    done <"$PIDS" >"$PIDS.tmp" || true
    mv "$PIDS.tmp" "$PIDS"
fi

UP_DONE=0
ARMED=0 # set once this run may start processes; a failed build stops nothing
on_exit() {
    local rc=$?
    if [ "$ARMED" -eq 1 ] && [ "$UP_DONE" -eq 0 ] && [ "$rc" -ne 0 ]; then
        if [ "${SAKUGA_KEEP_ON_FAILURE:-0}" = 1 ]; then
            warn "make up failed; what was started is left running ('make down' stops it)"
        elif [ -f "$PIDS" ]; then
            warn "make up failed; stopping what was started (SAKUGA_KEEP_ON_FAILURE=1 keeps it)"
            bash "$ROOT/scripts/down.sh" || true
        fi
    fi
}
trap on_exit EXIT

# ---------------------------------------------------------------------------- 1. tools, build

bash "$ROOT/scripts/tools.sh"
if [ "${SAKUGA_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --workspace --bins (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --workspace --bins)
fi
for s in "${SERVICES[@]}"; do
    [ -x "$BIN_DIR/sakuga-$s" ] || die "binary $BIN_DIR/sakuga-$s not found (did the build succeed?)"
done

# ---------------------------------------------------------------------------- 2. PostgreSQL, Redis

ARMED=1
ensure_postgres
ensure_redis

# ---------------------------------------------------------------------------- 3. OpenBao dev server

# The bao CLI as root; its stderr (warnings such as "no AIA fields") is shown only on failure.
bao_cli() {
    local err rc=0
    { err="$(BAO_ADDR="$BAO_URL" BAO_TOKEN="$ROOT_TOKEN" "$BAO" "$@" 2>&1 1>&3 3>&-)" || rc=$?; } 3>&1
    if [ "$rc" -ne 0 ]; then
        printf 'bao %s: %s\n' "$1 ${2:-}" "$err" >&2
    fi
    return "$rc"
}

start_bao() {
    local host="${BAO_LISTEN%:*}" port="${BAO_LISTEN##*:}" pid i log_file="$DEV/logs/bao.log"
    port_open "$host" "$port" &&
        die "something already listens on $BAO_LISTEN (another OpenBao or Vault?); stop it or set SAKUGA_BAO_ADDR"
    mkdir -p "$DEV/logs" "$DEV/vault"
    : >"$log_file"
    chmod 600 "$log_file"
    log "starting OpenBao dev server on $BAO_URL (log .dev/logs/bao.log)"
    # The dev server makes up its own root token and prints it to its log, nowhere else.
    (exec_clean "" "$BAO" server -dev -dev-no-store-token -dev-listen-address="$BAO_LISTEN" \
        >>"$log_file" 2>&1 </dev/null) &
    pid=$!
    pids_add bao "$pid"
    for i in $(seq 1 150); do
        pid_alive "$pid" || {
            tail -n 30 "$log_file" >&2
            die "the OpenBao dev server exited"
        }
        ROOT_TOKEN="$(sed -n 's/^Root Token: *//p' "$log_file" | tail -n 1)"
        if [ -n "$ROOT_TOKEN" ] && bao_cli status >/dev/null 2>&1; then
            break
        fi
        sleep 0.2
    done
    if [ -z "$ROOT_TOKEN" ] || ! bao_cli status >/dev/null 2>&1; then
        die "the OpenBao dev server did not come up in 30 s; see .dev/logs/bao.log"
    fi
    printf '%s\n' "$ROOT_TOKEN" | write_private "$DEV/vault/root-token"
}

start_bao

# ---------------------------------------------------------------------------- 4. seed

# Application credentials: new random passwords on every `make up`, applied to PostgreSQL
# and Redis and stored in KV, each service's under its own path (`sakuga/<service>/...`)
# that only its policy reads. They travel through stdin only, never through argv.
seed_credentials() {
    local owner_pw pw out s users=()
    owner_pw="$(random_secret)"

    log "PostgreSQL: owner role $APP_DB_USER (runs the migrations) and database $APP_DB_NAME"
    pg_admin <<SQL
SELECT format('CREATE ROLE %I', '$APP_DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$APP_DB_USER') \gexec
ALTER ROLE $APP_DB_USER WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$owner_pw';
SELECT format('CREATE DATABASE %I OWNER %I', '$APP_DB_NAME', '$APP_DB_USER')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$APP_DB_NAME') \gexec
ALTER DATABASE $APP_DB_NAME OWNER TO $APP_DB_USER;
REVOKE ALL ON DATABASE $APP_DB_NAME FROM PUBLIC;
SQL
    printf '{"username":"%s","password":"%s"}' "$APP_DB_USER" "$owner_pw" |
        bao_cli kv put -mount=secret sakuga/migrator/database - >/dev/null

    # One login role per service, a member of the group role whose privileges migration
    # 0010 grants (the groups are made here too, so the owner needs no CREATEROLE).
    ensure_service_db_groups
    for s in auth scheduler organizer; do
        pw="$(random_secret)"
        log "PostgreSQL: login role sakuga_${s}_login (group sakuga_$s), OpenBao KV secret/sakuga/$s/database"
        pg_admin <<SQL
SELECT format('CREATE ROLE %I', 'sakuga_${s}_login')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'sakuga_${s}_login') \gexec
ALTER ROLE sakuga_${s}_login WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT PASSWORD '$pw';
GRANT sakuga_$s TO sakuga_${s}_login;
SQL
        printf '{"username":"sakuga_%s_login","password":"%s"}' "$s" "$pw" |
            bao_cli kv put -mount=secret "sakuga/$s/database" - >/dev/null
    done

    # One ACL user per service with its own keys and channels (deploy/redis/acl.conf).
    for s in $(redis_acl_services); do
        pw="$(random_secret)"
        log "Redis: ACL user sakuga-$s, OpenBao KV secret/sakuga/$s/redis"
        out="$({
            redis_acl_setuser "$s" "$pw"
            printf 'AUTH sakuga-%s %s\nPING\n' "$s" "$pw"
        } | redis_admin 2>&1 || true)"
        [ "$(printf '%s\n' "$out" | tr -d '\r' | paste -sd' ')" = "OK OK PONG" ] ||
            die "could not create the Redis ACL user sakuga-$s: $(printf '%s' "$out" | head -n 3)"
        users+=("sakuga-$s")
        printf '{"username":"sakuga-%s","password":"%s"}' "$s" "$pw" |
            bao_cli kv put -mount=secret "sakuga/$s/redis" - >/dev/null
    done
    mkdir -p "$DEV/run"
    echo "$LOOPBACK $REDIS_PORT ${users[*]}" >"$DEV/run/redis-acl"

    # The token signing key: Ed25519, a new one every `make up` (tokens of an earlier
    # stack stop verifying, which is what a fresh dev stack wants).
    log "OpenBao KV: secret/sakuga/auth/signing (Ed25519 token signing key)"
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    local kid key
    kid="dev-$(date -u +%Y%m%d%H%M%S)"
    key="$(openssl genpkey -algorithm ed25519 2>/dev/null)" || die "openssl cannot generate an Ed25519 key"
    KID="$kid" KEY="$key" python3 -c 'import json, os; print(json.dumps({"active": os.environ["KID"], os.environ["KID"]: os.environ["KEY"]}))' |
        bao_cli kv put -mount=secret sakuga/auth/signing - >/dev/null

    # The key that seals webhook endpoint secrets in PostgreSQL: made once and kept in
    # .dev/webhooks.key (0600), so endpoints registered earlier still sign after a restart.
    if [ ! -s "$DEV/webhooks.key" ]; then
        openssl rand -base64 32 | write_private "$DEV/webhooks.key"
    fi
    log "OpenBao KV: secret/sakuga/scheduler/webhooks (the key that seals webhook secrets)"
    printf '{"key":"%s"}' "$(tr -d '\n' <"$DEV/webhooks.key")" |
        bao_cli kv put -mount=secret sakuga/scheduler/webhooks - >/dev/null

    # The bootstrap admin: its password is made once and kept in .dev/admin.password
    # (0600); auth creates the account, or resets its password to this, at start-up.
    if [ ! -s "$DEV/admin.password" ]; then
        random_secret | write_private "$DEV/admin.password"
    fi
    log "OpenBao KV: secret/sakuga/auth/bootstrap-admin (user admin, password in .dev/admin.password)"
    printf '{"username":"admin","password":"%s"}' "$(cat "$DEV/admin.password")" |
        bao_cli kv put -mount=secret sakuga/auth/bootstrap-admin - >/dev/null
}

seed_pki() {
    log "OpenBao PKI: root CA sakuga-dev-root, a role per service (sakuga-<service>), client-only role sakuga-user"
    mkdir -p "$DEV/certs"
    bao_cli secrets enable pki >/dev/null
    bao_cli secrets tune -max-lease-ttl=87600h pki >/dev/null
    bao_cli write -field=certificate pki/root/generate/internal \
        common_name=sakuga-dev-root issuer_name=sakuga-dev-root ttl=87600h >"$DEV/certs/ca.pem.tmp"
    echo >>"$DEV/certs/ca.pem.tmp"
    mv "$DEV/certs/ca.pem.tmp" "$DEV/certs/ca.pem"
    chmod 644 "$DEV/certs/ca.pem"
    # Each service's role issues only its own names (those deploy/k8s uses too) and its
    # own SPIFFE id; its policy (seed_approles) may issue from that role alone.
    local s
    for s in "${SERVICES[@]}"; do
        bao_cli write "pki/roles/sakuga-$s" \
            allowed_domains="$s.sakuga,$s,$s.sakuga.svc,$s.sakuga.svc.cluster.local" \
            allow_bare_domains=true allow_subdomains=false allow_glob_domains=false \
            allow_localhost=true allow_ip_sans=true allowed_uri_sans="spiffe://sakuga/$s" \
            server_flag=true client_flag=true key_type=ec key_bits=256 max_ttl=72h >/dev/null
    done
    # People and scripts: client certificates only, for spiffe://sakuga/user/<name>.
    bao_cli write pki/roles/sakuga-user \
        allowed_domains=user.sakuga allow_subdomains=true allow_bare_domains=false \
        allow_glob_domains=false allow_localhost=false allow_ip_sans=false \
        allowed_uri_sans="spiffe://sakuga/user/*" server_flag=false client_flag=true \
        key_type=ec key_bits=256 max_ttl=72h >/dev/null

    log "operator client certificate (CN operator.user.sakuga, spiffe://sakuga/user/operator, client-only)"
    bao_cli write -format=json pki/issue/sakuga-user common_name=operator.user.sakuga \
        uri_sans=spiffe://sakuga/user/operator ttl=72h |
        python3 -c '
import json, os, sys
d = json.load(sys.stdin)["data"]
chain = d.get("ca_chain") or [d["issuing_ca"]]
with open(sys.argv[1], "w") as f:
    f.write("\n".join(c.strip() for c in [d["certificate"], *chain]) + "\n")
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write(d["private_key"].strip() + "\n")
' "$DEV/certs/operator.pem" "$DEV/certs/operator.key"
    chmod 600 "$DEV/certs/operator.key"
}

seed_approles() {
    log "OpenBao AppRole: roles ${SERVICES[*]} migrator"
    bao_cli auth enable approle >/dev/null
    # Logins and tokens are bound to loopback when OpenBao listens there.
    local bind=()
    case "${BAO_LISTEN%:*}" in
    127.* | localhost | "[::1]") bind=(secret_id_bound_cidrs=127.0.0.0/8 token_bound_cidrs=127.0.0.0/8) ;;
    esac
    local s
    for s in "${SERVICES[@]}" migrator; do
        {
            # Least privilege: each reads only its own secrets (the generator's are the
            # values of [[comfyui.headers]], if any) and issues only its own certificate;
            # the migrator reads the owner's login.
            printf 'path "secret/data/sakuga/%s/*" {\n  capabilities = ["read"]\n}\n' "$s"
            [ "$s" = migrator ] ||
                printf 'path "pki/issue/sakuga-%s" {\n  capabilities = ["update"]\n}\n' "$s"
        } | bao_cli policy write "sakuga-$s" - >/dev/null
        bao_cli write "auth/approle/role/$s" token_policies="sakuga-$s" \
            token_ttl=1h token_max_ttl=24h secret_id_ttl=0 "${bind[@]}" >/dev/null
        mkdir -p "$DEV/vault/$s"
        bao_cli read -field=role_id "auth/approle/role/$s/role-id" | write_private "$DEV/vault/$s/role-id"
        bao_cli write -f -field=secret_id "auth/approle/role/$s/secret-id" |
            write_private "$DEV/vault/$s/secret-id"
        # The role logs in (credentials on stdin) and gets its policy: seeding went right.
        local policies
        policies="$(printf '{"role_id":"%s","secret_id":"%s"}' "$(cat "$DEV/vault/$s/role-id")" \
            "$(cat "$DEV/vault/$s/secret-id")" |
            BAO_ADDR="$BAO_URL" "$BAO" write -field=token_policies auth/approle/login - 2>&1 || true)"
        [[ "$policies" == *"sakuga-$s"* ]] || die "AppRole login of $s failed: $policies"
    done
}

seed_credentials
seed_pki
seed_approles

# ---------------------------------------------------------------------------- 4b. object store

# SAKUGA_STORAGE=s3: the organizer keeps its bytes in a real SeaweedFS (`weed server -s3`,
# from .tools) on loopback instead of .dev/files. Its access key is made here, given to
# SeaweedFS in an identity file and to the organizer through OpenBao only.
STORAGE="${SAKUGA_STORAGE:-local}"
WEED_S3_PORT="${SAKUGA_WEED_S3_PORT:-8333}"
S3_BUCKET=sakuga
start_weed() {
    local dir="$DEV/weed" log_file="$DEV/logs/weed.log" key secret pid i out
    local master="${SAKUGA_WEED_MASTER_PORT:-19333}" volume="${SAKUGA_WEED_VOLUME_PORT:-18080}"
    local filer="${SAKUGA_WEED_FILER_PORT:-18888}"
    [ -x "$TOOLS_BIN/weed" ] || die "no SeaweedFS at .tools/bin/weed (scripts/tools.sh installs it)"
    port_open "$LOOPBACK" "$WEED_S3_PORT" &&
        die "something already listens on $LOOPBACK:$WEED_S3_PORT; stop it or set SAKUGA_WEED_S3_PORT"
    mkdir -p "$dir/data" "$DEV/logs"
    key="AK$(random_secret | cut -c1-16 | tr 'a-f' 'A-F')"
    secret="$(random_secret)"
    printf '{"identities":[{"name":"organizer","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$key" "$secret" | write_private "$dir/s3.json"
    log "starting SeaweedFS (S3 on $LOOPBACK:$WEED_S3_PORT, log .dev/logs/weed.log)"
    (exec_clean "" "$TOOLS_BIN/weed" server -dir="$dir/data" -ip="$LOOPBACK" -ip.bind="$LOOPBACK" \
        -master.port=$master -master.port.grpc=$((master + 10000)) \
        -volume.port=$volume -volume.port.grpc=$((volume + 10000)) \
        -filer.port=$filer -filer.port.grpc=$((filer + 10000)) -filer.localSocket="$dir/filer.sock" \
        -s3 -s3.port="$WEED_S3_PORT" -s3.port.grpc=$((WEED_S3_PORT + 10000)) \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$dir/s3.json" \
        -volume.max=0 -master.volumeSizeLimitMB=64 >>"$log_file" 2>&1 </dev/null) &
    pid=$!
    pids_add weed "$pid"
    for i in $(seq 1 300); do
        pid_alive "$pid" || {
            tail -n 30 "$log_file" >&2
            die "SeaweedFS exited"
        }
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://$LOOPBACK:$WEED_S3_PORT/healthz" 2>/dev/null && break
        sleep 0.2
    done
    # The S3 gateway answers before the shell can create buckets: try until it says so.
    for i in $(seq 1 60); do
        out="$(echo "s3.bucket.create -name $S3_BUCKET" |
            timeout 10 "$TOOLS_BIN/weed" shell -master="$LOOPBACK:$master.$((master + 10000))" 2>&1 || true)"
        case "$out" in *"created bucket"* | *"already exist"*) break ;; esac
        [ "$i" -lt 60 ] || die "SeaweedFS did not create bucket $S3_BUCKET: $(printf '%s' "$out" | tail -n 3)"
        sleep 0.5
    done
    log "OpenBao KV: secret/sakuga/organizer/s3 (the organizer's access key to bucket $S3_BUCKET)"
    printf '{"access_key_id":"%s","secret_access_key":"%s"}' "$key" "$secret" |
        bao_cli kv put -mount=secret sakuga/organizer/s3 - >/dev/null
}
case "$STORAGE" in
local) ;;
s3) start_weed ;;
*) die "SAKUGA_STORAGE must be local or s3, got '$STORAGE'" ;;
esac

# ---------------------------------------------------------------------------- 5. configs

toml_str() { # a TOML basic string
    local v="${1//\\/\\\\}"
    printf '"%s"' "${v//\"/\\\"}"
}

write_config() {
    local s="$1" f="$DEV/config/$1.toml"
    mkdir -p "$DEV/config"
    {
        echo "# written by scripts/up.sh; no secrets here (they come from OpenBao)"
        [ "$s" = auth ] || echo "auth_addr = $(toml_str "$LOOPBACK:${SERVICE_PORT[auth]}")"
        case "$s" in
        scheduler)
            # The local stack's demo receivers listen on loopback over plain HTTP.
            echo
            echo "[webhooks]"
            echo "allow_http = true"
            echo 'allow_networks = ["127.0.0.0/8", "::1/128"]'
            ;;
        organizer)
            if [ "$STORAGE" = s3 ]; then
                echo 'storage.backend = "s3"'
            else
                echo "storage.root = $(toml_str "$DEV/files")"
            fi
            ;;
        generator)
            echo "scheduler_addr = $(toml_str "$LOOPBACK:${SERVICE_PORT[scheduler]}")"
            echo "organizer_addr = $(toml_str "$LOOPBACK:${SERVICE_PORT[organizer]}")"
            echo "slots = ${SAKUGA_GENERATOR_SLOTS:-2}"
            if [ -n "${SAKUGA_COMFYUI_URL:-}" ]; then
                echo 'backend = "comfyui"'
            fi
            ;;
        esac
        if [ "$s" = generator ] && [ -n "${SAKUGA_COMFYUI_URL:-}" ]; then
            # Several servers: comma-separated; each is one slot.
            local urls="" u
            IFS=',' read -ra comfy_urls <<<"$SAKUGA_COMFYUI_URL"
            for u in "${comfy_urls[@]}"; do
                urls="${urls:+$urls, }$(toml_str "$u")"
            done
            echo
            echo "[comfyui]"
            echo "urls = [$urls]"
            echo "image_template = $(toml_str "${SAKUGA_COMFYUI_TEMPLATE:-smoke}")"
            echo "video_template = $(toml_str "${SAKUGA_COMFYUI_VIDEO_TEMPLATE:-animation}")"
            [ -z "${SAKUGA_COMFYUI_CHECKPOINT:-}" ] ||
                echo "default_checkpoint = $(toml_str "$SAKUGA_COMFYUI_CHECKPOINT")"
        fi
        if [ "$s" = organizer ] && [ "$STORAGE" = s3 ]; then
            echo
            echo "[storage.s3]"
            echo "endpoint = $(toml_str "http://$LOOPBACK:$WEED_S3_PORT")"
            echo "bucket = \"$S3_BUCKET\""
            echo 'path_style = true'
            echo 'allow_http = true'
            echo 'vault_path = "sakuga/organizer/s3"'
        fi
        echo
        echo "[server]"
        echo "listen = $(toml_str "$LOOPBACK:${SERVICE_PORT[$s]}")"
        echo
        echo "[server.vault]"
        echo "addr = $(toml_str "$BAO_URL")"
        echo 'auth = "approle"'
        echo "role_id_file = $(toml_str "$DEV/vault/$s/role-id")"
        echo "secret_id_file = $(toml_str "$DEV/vault/$s/secret-id")"
        echo 'kv_mount = "secret"'
        echo 'pki_mount = "pki"'
        echo "pki_role = \"sakuga-$s\""
        if [ "$s" != generator ]; then
            echo
            echo "[database]"
            echo "host = $(toml_str "$LOOPBACK")"
            echo "port = $PG_PORT"
            echo "dbname = $(toml_str "$APP_DB_NAME")"
            echo "vault_path = \"sakuga/$s/database\""
        fi
        if [ "$s" != generator ]; then
            echo
            echo "[redis]"
            echo "host = $(toml_str "$LOOPBACK")"
            echo "port = $REDIS_PORT"
            echo "vault_path = \"sakuga/$s/redis\""
            echo 'key_prefix = "sakuga:"'
        fi
    } >"$f"
}

for s in "${SERVICES[@]}"; do
    write_config "$s"
done
mkdir -p "$DEV/files"

# The schema is changed by its owner alone: `migrate` of the auth binary, logged in to
# OpenBao as the migrator (which reads only the owner's login). The services' own roles
# may not change the schema; at start-up they only check that it is current.
{
    echo "# written by scripts/up.sh: migrations as the owner role; no secrets here"
    echo
    echo "[server.vault]"
    echo "addr = $(toml_str "$BAO_URL")"
    echo 'auth = "approle"'
    echo "role_id_file = $(toml_str "$DEV/vault/migrator/role-id")"
    echo "secret_id_file = $(toml_str "$DEV/vault/migrator/secret-id")"
    echo
    echo "[database]"
    echo "host = $(toml_str "$LOOPBACK")"
    echo "port = $PG_PORT"
    echo "dbname = $(toml_str "$APP_DB_NAME")"
    echo 'vault_path = "sakuga/migrator/database"'
} >"$DEV/config/migrate.toml"
log "migrations as the owner role $APP_DB_USER"
(cd "$ROOT" && exec_clean "SAKUGA_AUTH__" "$BIN_DIR/sakuga-auth" --config "$DEV/config/migrate.toml" migrate) ||
    die "the migrations failed (see above)"

# ---------------------------------------------------------------------------- 6. services

for s in "${SERVICES[@]}"; do
    start_service "$s"
done

# ---------------------------------------------------------------------------- 7. stack.env

{
    echo "# written by scripts/up.sh: addresses and file paths of the local stack (no secrets)"
    printf 'SAKUGA_AUTH_ADDR=%q\n' "$LOOPBACK:${SERVICE_PORT[auth]}"
    printf 'SAKUGA_SCHEDULER_ADDR=%q\n' "$LOOPBACK:${SERVICE_PORT[scheduler]}"
    printf 'SAKUGA_ORGANIZER_ADDR=%q\n' "$LOOPBACK:${SERVICE_PORT[organizer]}"
    printf 'SAKUGA_GENERATOR_HEALTH_ADDR=%q\n' "$LOOPBACK:${SERVICE_PORT[generator]}"
    printf 'SAKUGA_VAULT_ADDR=%q\n' "$BAO_URL"
    printf 'SAKUGA_CA=%q\n' "$DEV/certs/ca.pem"
    printf 'SAKUGA_CLIENT_CERT=%q\n' "$DEV/certs/operator.pem"
    printf 'SAKUGA_CLIENT_KEY=%q\n' "$DEV/certs/operator.key"
    printf 'SAKUGA_GRPCURL=%q\n' "$GRPCURL"
    printf 'SAKUGA_DATABASE_ADDR=%q\n' "$LOOPBACK:$PG_PORT"
    printf 'SAKUGA_REDIS_ADDR=%q\n' "$LOOPBACK:$REDIS_PORT"
} >"$DEV/stack.env"
chmod 644 "$DEV/stack.env"

UP_DONE=1
cat <<EOF

Sakuga stack is up (mTLS everywhere; operator certificate in .dev/certs/):
  auth        $LOOPBACK:${SERVICE_PORT[auth]}
  scheduler   $LOOPBACK:${SERVICE_PORT[scheduler]}
  organizer   $LOOPBACK:${SERVICE_PORT[organizer]}
  generator   $LOOPBACK:${SERVICE_PORT[generator]} (health)
  OpenBao     $BAO_URL (root token in .dev/vault/root-token)
  admin       user admin, password in .dev/admin.password
  PostgreSQL  $LOOPBACK:$PG_PORT, Redis $LOOPBACK:$REDIS_PORT
Logs in .dev/logs/, addresses in .dev/stack.env. Try:
  .tools/bin/grpcurl -cacert .dev/certs/ca.pem -cert .dev/certs/operator.pem -key .dev/certs/operator.key $LOOPBACK:${SERVICE_PORT[scheduler]} list
Stop with: make down
EOF
