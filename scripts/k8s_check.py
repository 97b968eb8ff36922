"""Checks deploy/k8s: every object of the base and of each overlay's own files is valid
for the pinned Kubernetes version (kubernetes-validate), and the policy holds:

- every Deployment (and the migration Job) has resources (requests and limits), runs as
  non-root with a read-only root filesystem, no privilege escalation and all capabilities
  dropped; Deployments have gRPC readiness and liveness probes;
- a default-deny NetworkPolicy exists, and every Service port is open only through a
  NetworkPolicy that selects the Service's pods, names the port and names its callers;
- the organizer matches its storage: on a volume (ReadWriteOnce, one writer) exactly one
  replica with the Recreate strategy; on an object store (`[storage] backend = "s3"`) no
  volume claim, several replicas and a RollingUpdate that keeps every replica serving.

With `kustomize` or `kubectl` on PATH, each overlay is rendered and its output checked the
same way; without them the overlays are checked file by file (the rendering is skipped
and said so).
"""

import glob
import os
import shutil
import subprocess
import sys
import tomllib

import yaml
import kubernetes_validate

K8S_VERSION = "1.31.0"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "k8s")
problems = []


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def validate(obj, where):
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        problems.append(f"{where}: {obj.get('kind')}/{obj['metadata'].get('name')}: {e.message}")


def pod_spec(obj):
    if obj["kind"] in ("Deployment", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def check_workload(obj, where):
    spec = pod_spec(obj)
    name = f"{where}: {obj['kind']}/{obj['metadata']['name']}"
    pod_nonroot = spec.get("securityContext", {}).get("runAsNonRoot") is True
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    problems.append(f"{name}: container {c['name']} has no {kind}.{r}")
        if not (pod_nonroot or sc.get("runAsNonRoot") is True):
            problems.append(f"{name}: container {c['name']} may run as root")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: container {c['name']} has a writable root filesystem")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: container {c['name']} allows privilege escalation")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: container {c['name']} keeps capabilities")
        if obj["kind"] == "Deployment":
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in c.get(probe, {}):
                    problems.append(f"{name}: container {c['name']} has no gRPC {probe}")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def check_network(objects, where):
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if not any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", []) for p in policies):
        problems.append(f"{where}: no default-deny ingress NetworkPolicy")
    pods = {}
    for o in objects:
        if o["kind"] == "Deployment":
            pods[o["metadata"]["name"]] = o["spec"]["template"]["metadata"]["labels"]
    for svc in (o for o in objects if o["kind"] == "Service"):
        labels = next((l for l in pods.values() if selects({"matchLabels": svc["spec"]["selector"]}, l)), None)
        if labels is None:
            problems.append(f"{where}: Service/{svc['metadata']['name']} selects no Deployment")
            continue
        for port in svc["spec"]["ports"]:
            target = port["port"]
            covered = False
            for p in policies:
                if not selects(p["spec"].get("podSelector", {}), labels):
                    continue
                for rule in p["spec"].get("ingress", []):
                    ports = [x.get("port") for x in rule.get("ports", [])]
                    if target in ports and rule.get("from"):
                        covered = True
            if not covered:
                problems.append(
                    f"{where}: Service/{svc['metadata']['name']} port {target} is not opened by a NetworkPolicy naming its callers"
                )


def check_organizer_storage(objects, where):
    by_kind = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    config = by_kind.get(("ConfigMap", "sakuga-organizer"))
    deployment = by_kind.get(("Deployment", "organizer"))
    if config is None or deployment is None:
        return
    settings = tomllib.loads(config["data"]["organizer.toml"])
    backend = settings.get("storage", {}).get("backend", "local")
    spec = deployment["spec"]
    strategy = spec.get("strategy", {})
    claims = [v for v in spec["template"]["spec"].get("volumes", []) if "persistentVolumeClaim" in v]
    name = f"{where}: Deployment/organizer ({backend} storage)"
    if backend == "s3":
        if claims or any(k == "PersistentVolumeClaim" for k, _ in by_kind):
            problems.append(f"{name}: keeps a volume claim; the bytes live in the bucket")
        if spec.get("replicas", 1) < 2:
            problems.append(f"{name}: one replica; an object store lets several serve")
        if strategy.get("type") != "RollingUpdate" or strategy.get("rollingUpdate", {}).get("maxUnavailable") != 0:
            problems.append(f"{name}: a rollout must keep every replica serving (RollingUpdate, maxUnavailable 0)")
    elif claims and (spec.get("replicas", 1) != 1 or strategy.get("type") != "Recreate"):
        problems.append(f"{name}: a ReadWriteOnce volume allows one replica, replaced with Recreate")


def check(objects, where):
    for o in objects:
        validate(o, where)
        if o["kind"] in ("Deployment", "Job"):
            check_workload(o, where)
    check_network(objects, where)
    check_organizer_storage(objects, where)


def render(overlay):
    for tool in (["kustomize", "build"], ["kubectl", "kustomize"]):
        if shutil.which(tool[0]):
            out = subprocess.run(tool + [overlay], capture_output=True, text=True, check=True).stdout
            return [d for d in yaml.safe_load_all(out) if d]
    return None


base = [d for f in sorted(glob.glob(os.path.join(ROOT, "base", "*.yaml"))) if not f.endswith("kustomization.yaml") for d in load(f)]
check(base, "base")
print(f"base: {len(base)} objects")
for overlay in sorted(glob.glob(os.path.join(ROOT, "overlays", "*"))):
    name = os.path.basename(overlay)
    rendered = render(overlay)
    if rendered is None:
        # Without kustomize: the overlay's complete objects are validated; patches are
        # checked to be well-formed YAML naming an existing base object.
        files = [f for f in sorted(glob.glob(os.path.join(overlay, "*.yaml"))) if not f.endswith("kustomization.yaml")]
        names = {(o["kind"], o["metadata"]["name"]) for o in base}
        for f in files:
            for d in load(f):
                if d["kind"] == "Namespace":
                    validate(d, name)
                elif (d["kind"], d["metadata"]["name"]) not in names:
                    problems.append(f"{name}: {os.path.basename(f)} patches {d['kind']}/{d['metadata']['name']}, which the base lacks")
        load(os.path.join(overlay, "kustomization.yaml"))
        print(f"overlay {name}: files checked; rendering skipped (no kustomize or kubectl on this machine)")
    else:
        check(rendered, name)
        print(f"overlay {name}: {len(rendered)} objects rendered and checked")

if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print("deploy/k8s: ok")
