#!/usr/bin/env bash
# make k8s-check: validates deploy/k8s with kubernetes-validate (pinned, installed into
# .tools/python) and the policy checks of scripts/k8s_check.py.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBERNETES_VALIDATE_VERSION=1.37.0
target="$ROOT/.tools/python/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$target/.complete" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into .tools/python"
    rm -rf "$target"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --target "$target" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
        die "pip install of kubernetes-validate failed"
    touch "$target/.complete"
fi
PYTHONPATH="$target" python3 "$ROOT/scripts/k8s_check.py"
