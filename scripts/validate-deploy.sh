#!/usr/bin/env bash
# Static validation of the deployment files; needs no Docker engine and no cluster.
#
#   scripts/validate-deploy.sh
#
# 1. docker-compose.yml: `docker-compose config` with and without the `observability` profile,
#    bind-mounted files exist, the worker's stop_grace_period exceeds FLOTILLA_GRACE_S.
# 2. deploy/: YAML parses; promtool, haproxy and shellcheck checks when those tools exist.
# 3. k8s/: `kubectl kustomize` of base and every overlay, schema-validated with
#    kubernetes-validate (strict, fixed Kubernetes version, offline), CRD kinds checked
#    structurally instead, plus Flotilla's own invariants (drain budget, probes, security
#    context, placeholders-only Secrets, consumer_timeout, cross-references), and the dev
#    overlay's TOML still matching config/flotilla.toml.
#
# Installs what is missing when it can (apt-get as root for docker-compose, pip for
# kubernetes-validate); after that it runs offline. Exits non-zero on any failure.
#
# Environment: K8S_VERSION (default 1.30.0, must be one kubernetes-validate ships).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION="${K8S_VERSION:-1.30.0}"
# name -> kustomization directory
OVERLAY_NAMES=(base dev prod hpa)
declare -A OVERLAY_DIRS=(
  [base]=k8s/base
  [dev]=k8s/overlays/dev
  [prod]=k8s/overlays/prod
  [hpa]=k8s/overlays/hpa
)

say() { echo "validate-deploy: $*"; }
fail() {
  echo "validate-deploy: FAIL: $*" >&2
  exit 1
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- tools ------------------------------------------------------------------------------------

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || fail "python3 is required"

pip_install() {
  say "installing $* with pip"
  "$PY" -m pip install --quiet --disable-pip-version-check "$@" >&2 ||
    fail "pip install $* failed; install it by hand"
}

COMPOSE=()
if command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing docker-compose with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null 2>&1
  } || fail "apt-get install docker-compose failed"
  COMPOSE=(docker-compose)
else
  fail "neither docker-compose nor 'docker compose' is available (Debian: apt-get install docker-compose)"
fi

KUSTOMIZE=()
if command -v kubectl >/dev/null 2>&1; then
  KUSTOMIZE=(kubectl kustomize)
elif command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE=(kustomize build)
else
  fail "kubectl (or kustomize) is required: https://kubernetes.io/docs/tasks/tools/"
fi

command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
command -v kubernetes-validate >/dev/null 2>&1 ||
  fail "kubernetes-validate is not on PATH after pip install"
"$PY" -c 'import yaml' 2>/dev/null || pip_install pyyaml
"$PY" -c 'import tomllib' 2>/dev/null || "$PY" -c 'import tomli' 2>/dev/null || pip_install tomli

# The helper: structural and cross-reference checks kubernetes-validate cannot do.
cat >"$TMP/check.py" <<'PY'
import os
import re
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

errors = []


def err(msg):
    errors.append(msg)


def info(msg):
    print(f"validate-deploy:   {msg}")


def seconds(v):
    """Compose durations: 45s, 1m30s, 1h, 300ms, or a bare number of seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    total, matched = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", str(v)):
        matched = True
        total += float(num) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    if not matched:
        raise ValueError(f"unreadable duration {v!r}")
    return total


def env_value(env, name):
    if isinstance(env, dict):
        return env.get(name)
    for item in env or []:
        if isinstance(item, str) and item.startswith(name + "="):
            return item.split("=", 1)[1]
    return None


def finish():
    for e in errors:
        print(f"validate-deploy: FAIL: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


# ---- compose ---------------------------------------------------------------------------------

def check_compose(path, profile):
    with open(path) as f:
        cfg = yaml.safe_load(f)
    services = cfg.get("services", {})
    need = {"rabbitmq", "redis", "producer", "worker", "receiver"}
    if profile:
        need |= {"otel-collector", "jaeger", "prometheus", "grafana"}
    missing = need - set(services)
    if missing:
        err(f"compose: services missing: {sorted(missing)}")
    for name, svc in services.items():
        for vol in svc.get("volumes", []) or []:
            src = vol.get("source") if isinstance(vol, dict) else str(vol).split(":")[0]
            kind = vol.get("type") if isinstance(vol, dict) else ("bind" if src.startswith(("/", ".")) else "volume")
            if kind == "bind":
                if not os.path.exists(src):
                    err(f"compose: {name}: bind-mounted {src} does not exist")
    for name in ("rabbitmq", "redis", "producer", "worker", "receiver"):
        if name in services and "healthcheck" not in services[name]:
            err(f"compose: {name} has no healthcheck")
    for name in ("producer", "worker"):
        dep = services.get(name, {}).get("depends_on", {})
        for backend in ("rabbitmq", "redis"):
            cond = dep.get(backend, {}).get("condition") if isinstance(dep, dict) else None
            if cond != "service_healthy":
                err(f"compose: {name} must depend on {backend} with condition service_healthy")
    worker = services.get("worker", {})
    replicas = (worker.get("deploy") or {}).get("replicas")
    if replicas != 2:
        err(f"compose: worker deploy.replicas is {replicas}, expected 2")
    grace = env_value(worker.get("environment"), "FLOTILLA_GRACE_S") or "30"
    stop = seconds(worker.get("stop_grace_period", "10s"))
    if not stop > float(grace):
        err(f"compose: worker stop_grace_period ({stop:g}s) must exceed FLOTILLA_GRACE_S ({grace})")
    redis_cmd = " ".join(map(str, services.get("redis", {}).get("command", []) or []))
    for want in ("--appendonly yes", "--maxmemory-policy noeviction"):
        if want not in redis_cmd:
            err(f"compose: redis command lacks `{want}`")
    finish()


# ---- kubernetes ------------------------------------------------------------------------------

# Kinds from CRDs: kubernetes-validate has no schema for them; checked structurally below.
CRD_REASONS = {
    ("keda.sh", "ScaledObject"): "KEDA CRD, schema not shipped with kubernetes-validate",
    ("keda.sh", "TriggerAuthentication"): "KEDA CRD, schema not shipped with kubernetes-validate",
    ("rabbitmq.com", "RabbitmqCluster"): "RabbitMQ Cluster Operator CRD, schema not shipped with kubernetes-validate",
    ("monitoring.coreos.com", "ServiceMonitor"): "Prometheus Operator CRD, schema not shipped with kubernetes-validate",
}

# Secrets that overlays/prod expects to exist in the cluster (created out of band).
OUT_OF_BAND_SECRETS = {"flotilla-connections", "flotilla-webhook-secrets", "flotilla-keda-rabbitmq", "redis-auth"}


def group_of(doc):
    api = doc.get("apiVersion", "")
    return api.split("/")[0] if "/" in api else ""


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec, spec.get("containers", []) + spec.get("initContainers", [])


def check_k8s(name, rendered, core_out):
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    core, crds = [], []
    for d in docs:
        key = (group_of(d), d.get("kind"))
        if key in CRD_REASONS:
            crds.append(d)
        else:
            core.append(d)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for d in crds:
        info(f"skip schema of {d['kind']}/{d['metadata']['name']}: {CRD_REASONS[(group_of(d), d['kind'])]} (checked structurally)")

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace" and ns != "flotilla":
            err(f"{name}: {d['kind']}/{d['metadata']['name']} is in namespace {ns!r}, expected 'flotilla'")

    deployments = by_kind.get("Deployment", {})
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})

    for must in ("flotilla-producer", "flotilla-worker"):
        if must not in deployments:
            err(f"{name}: Deployment {must} missing")
        if must not in services:
            err(f"{name}: Service {must} missing")
    for must in ("flotilla-producer", "flotilla-worker"):
        if must not in by_kind.get("PodDisruptionBudget", {}):
            err(f"{name}: PodDisruptionBudget {must} missing")
        if must not in by_kind.get("NetworkPolicy", {}):
            err(f"{name}: NetworkPolicy {must} missing")

    # Flotilla configuration from the generated ConfigMap.
    toml_cfg = None
    for cm_name, cm in configmaps.items():
        if cm_name.startswith("flotilla-config") and "flotilla.toml" in cm.get("data", {}):
            try:
                toml_cfg = tomllib.loads(cm["data"]["flotilla.toml"])
            except Exception as e:  # noqa: BLE001
                err(f"{name}: flotilla.toml in ConfigMap {cm_name} does not parse: {e}")
    if toml_cfg is None:
        err(f"{name}: no ConfigMap flotilla-config with flotilla.toml")
        toml_cfg = {}
    jobs = toml_cfg.get("jobs", {})
    max_timeout = int(jobs.get("max_timeout_s", 86400))
    default_timeout = int(jobs.get("default_timeout_s", 300))
    if default_timeout > max_timeout:
        err(f"{name}: jobs.default_timeout_s > jobs.max_timeout_s")
    for t in toml_cfg.get("tenants", []):
        for h in t.get("api_key_sha256", []):
            if not re.fullmatch(r"[0-9a-fA-F]{64}", h):
                err(f"{name}: tenant {t.get('name')}: api_key_sha256 entries must be 64 hex digits")
    if name != "dev":
        wh = toml_cfg.get("webhooks", {})
        if wh.get("allow_private") or wh.get("allow_http"):
            err(f"{name}: [webhooks] allow_private/allow_http must be false outside dev")

    # Flotilla pods: security context, probes, config mount, referenced Secrets.
    referenced_secrets = set()
    for dep_name, dep in deployments.items():
        spec, ctrs = containers(dep)
        for c in ctrs:
            for ef in c.get("envFrom", []):
                if "secretRef" in ef:
                    referenced_secrets.add(ef["secretRef"]["name"])
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    referenced_secrets.add(ref["name"])
        if not dep_name.startswith("flotilla-"):
            continue
        psc = spec.get("securityContext", {})
        if not psc.get("runAsNonRoot"):
            err(f"{name}: {dep_name}: pod securityContext.runAsNonRoot must be true")
        for c in spec.get("containers", []):
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                err(f"{name}: {dep_name}/{c['name']}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(f"{name}: {dep_name}/{c['name']}: allowPrivilegeEscalation must be false")
            if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
                err(f"{name}: {dep_name}/{c['name']}: capabilities must drop ALL")
            if "resources" not in c:
                err(f"{name}: {dep_name}/{c['name']}: no resources")
    for sts in by_kind.get("StatefulSet", {}).values():
        spec, ctrs = containers(sts)
        for c in ctrs:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    referenced_secrets.add(ref["name"])

    worker = deployments.get("flotilla-worker")
    if worker:
        spec, _ = containers(worker)
        c = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        grace = int(env.get("FLOTILLA_GRACE_S") or 30)
        concurrency = int(env.get("FLOTILLA_CONCURRENCY") or 16)
        tgps = int(spec.get("terminationGracePeriodSeconds", 30))
        pre = (c.get("lifecycle") or {}).get("preStop") or {}
        if "sleep" in pre:
            pre_s = int(pre["sleep"]["seconds"])
        elif "exec" in pre and pre["exec"]["command"][:1] == ["sleep"]:
            pre_s = int(pre["exec"]["command"][1])
        else:
            pre_s = 0
            err(f"{name}: worker has no preStop sleep")
        if not tgps > pre_s + grace:
            err(f"{name}: worker terminationGracePeriodSeconds ({tgps}) must exceed preStop ({pre_s}) + FLOTILLA_GRACE_S ({grace})")
        if not tgps > max_timeout:
            err(f"{name}: worker terminationGracePeriodSeconds ({tgps}) must exceed jobs.max_timeout_s ({max_timeout})")
        if grace < max_timeout:
            err(f"{name}: FLOTILLA_GRACE_S ({grace}) < jobs.max_timeout_s ({max_timeout}): long jobs would be cut at every scale-down")
        if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/healthz":
            err(f"{name}: worker livenessProbe must be GET /healthz")
        if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/readyz":
            err(f"{name}: worker readinessProbe must be GET /readyz")
        info(f"worker drain budget: terminationGracePeriodSeconds {tgps} > preStop {pre_s} + grace {grace}; max job {max_timeout} s")
    else:
        concurrency = 16

    # Secrets: templates hold placeholders only; the rest must be created out of band.
    for s_name, s in secrets.items():
        values = {**(s.get("stringData") or {}), **(s.get("data") or {})}
        if name != "dev":
            for k, v in values.items():
                if "REPLACE_ME" not in str(v):
                    err(f"{name}: Secret {s_name} key {k} is not a REPLACE_ME placeholder")
    for ref in sorted(referenced_secrets - set(secrets)):
        if ref in OUT_OF_BAND_SECRETS and name in ("prod", "hpa"):
            info(f"Secret {ref}: created out of band (docs/deploy.md)")
        else:
            err(f"{name}: Secret {ref} is referenced but not rendered")

    # CRDs, structurally.
    for so in by_kind.get("ScaledObject", {}).values():
        spec = so.get("spec", {})
        target = spec.get("scaleTargetRef", {}).get("name")
        if target not in deployments:
            err(f"{name}: ScaledObject {so['metadata']['name']}: scaleTargetRef {target} is not a Deployment here")
        if not spec.get("triggers"):
            err(f"{name}: ScaledObject without triggers")
        for trig in spec.get("triggers", []):
            md = trig.get("metadata", {})
            if trig.get("type") != "rabbitmq":
                err(f"{name}: ScaledObject trigger type {trig.get('type')!r}, expected rabbitmq")
            if md.get("protocol") != "http":
                err(f"{name}: ScaledObject trigger protocol must be http (counts unacked messages)")
            if md.get("mode") != "QueueLength" or md.get("queueName") != "flotilla.jobs.default":
                err(f"{name}: ScaledObject trigger must be mode QueueLength on flotilla.jobs.default")
            # value = FLOTILLA_CONCURRENCY means 100% of the prefetch windows in use; lower
            # values keep headroom. Above it, workers would be asked to hold more than they take.
            if not 0 < float(md.get("value", 0)) <= concurrency:
                err(f"{name}: ScaledObject trigger value {md.get('value')} must be in (0, FLOTILLA_CONCURRENCY={concurrency}]")
            auth = (trig.get("authenticationRef") or {}).get("name")
            if auth not in by_kind.get("TriggerAuthentication", {}):
                err(f"{name}: ScaledObject references TriggerAuthentication {auth} which is not rendered")
        if spec.get("minReplicaCount", 0) < 1:
            err(f"{name}: ScaledObject minReplicaCount must be >= 1 (workers also run events/dlq)")
    for ta in by_kind.get("TriggerAuthentication", {}).values():
        for ref in ta.get("spec", {}).get("secretTargetRef", []):
            if ref["name"] not in secrets and not (ref["name"] in OUT_OF_BAND_SECRETS and name in ("prod", "hpa")):
                err(f"{name}: TriggerAuthentication references Secret {ref['name']} which is not rendered")
            elif ref["name"] not in secrets:
                info(f"Secret {ref['name']}: created out of band (docs/deploy.md)")
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            err(f"{name}: HPA {hpa['metadata']['name']}: target {target} is not a Deployment here")
    scalers = len(by_kind.get("ScaledObject", {})) + len(by_kind.get("HorizontalPodAutoscaler", {}))
    if scalers > 1:
        err(f"{name}: both a ScaledObject and an HPA scale the workers")
    if worker and scalers == 0 and "replicas" not in worker["spec"]:
        if name == "base":
            info("worker replicas: left to the overlay (fixed count or autoscaler)")
        else:
            err(f"{name}: worker Deployment has neither replicas nor an autoscaler")
    for rc in by_kind.get("RabbitmqCluster", {}).values():
        spec = rc.get("spec", {})
        if spec.get("replicas") != 3:
            err(f"{name}: RabbitmqCluster {rc['metadata']['name']} must have 3 replicas")
        m = re.search(r"^\s*consumer_timeout\s*=\s*(\d+)", (spec.get("rabbitmq") or {}).get("additionalConfig", ""), re.M)
        if not m:
            err(f"{name}: RabbitmqCluster sets no consumer_timeout")
        elif int(m.group(1)) <= max_timeout * 1000:
            err(f"{name}: RabbitMQ consumer_timeout ({m.group(1)} ms) must exceed jobs.max_timeout_s ({max_timeout} s)")
        image = spec.get("image", "")
        vm = re.search(r":(\d+)\.(\d+)", image)
        if vm and (int(vm.group(1)), int(vm.group(2))) < (3, 10):
            err(f"{name}: RabbitMQ {image} is older than 3.10")
    for sm in by_kind.get("ServiceMonitor", {}).values():
        sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
        matched = [s for s in services.values()
                   if sel and all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
        ports = {p.get("name") for s in matched for p in s["spec"].get("ports", [])}
        for ep in sm.get("spec", {}).get("endpoints", []):
            if ep.get("port") not in ports and not (name in ("prod", "hpa") and sm["metadata"]["name"] == "rabbitmq"):
                err(f"{name}: ServiceMonitor {sm['metadata']['name']}: no selected Service has port {ep.get('port')!r}")
    finish()


def check_dev_toml(dev_path, demo_path):
    """The dev overlay's TOML is config/flotilla.toml plus max_timeout_s: report drift."""
    with open(dev_path, "rb") as f:
        dev = tomllib.load(f)
    with open(demo_path, "rb") as f:
        demo = tomllib.load(f)
    dev.get("jobs", {}).pop("max_timeout_s", None)
    demo.get("jobs", {}).pop("max_timeout_s", None)
    if dev != demo:
        err(f"{dev_path} differs from {demo_path} (beyond max_timeout_s): copy it again")
    finish()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "compose":
        check_compose(sys.argv[2], sys.argv[3] == "1")
    elif mode == "dev-toml":
        check_dev_toml(sys.argv[2], sys.argv[3])
    elif mode == "k8s":
        check_k8s(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")
PY

# ---- 1. compose -------------------------------------------------------------------------------

say "compose: ${COMPOSE[*]} config"
"${COMPOSE[@]}" -f docker-compose.yml config -q || fail "docker-compose.yml does not validate"
"${COMPOSE[@]}" -f docker-compose.yml config >"$TMP/compose.yaml"
"$PY" "$TMP/check.py" compose "$TMP/compose.yaml" 0 || fail "compose checks"

# (help text captured first: `grep -q` closing the pipe early would trip pipefail)
compose_help="$("${COMPOSE[@]}" --help 2>&1 || true)"
if grep -q -- '--profile' <<<"$compose_help"; then
  say "compose: ${COMPOSE[*]} --profile observability config"
  "${COMPOSE[@]}" -f docker-compose.yml --profile observability config -q ||
    fail "docker-compose.yml with --profile observability does not validate"
  "${COMPOSE[@]}" -f docker-compose.yml --profile observability config >"$TMP/compose-obs.yaml"
  "$PY" "$TMP/check.py" compose "$TMP/compose-obs.yaml" 1 || fail "compose checks (observability)"
else
  say "compose: this ${COMPOSE[*]} has no --profile option; observability profile not checked"
fi

# ---- 2. deploy/ and scripts -------------------------------------------------------------------

for f in deploy/*.yaml deploy/*.yml deploy/grafana/provisioning/*/*.yaml; do
  [ -e "$f" ] || continue
  "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f" || fail "$f is not valid YAML"
done
if command -v promtool >/dev/null 2>&1; then
  promtool check config --syntax-only deploy/prometheus.yml >/dev/null ||
    fail "promtool: deploy/prometheus.yml"
  say "deploy: promtool check config ok"
else
  say "deploy: promtool not installed; deploy/prometheus.yml only parsed as YAML"
fi
if command -v haproxy >/dev/null 2>&1; then
  REDIS_PASSWORD=x POD_NAMESPACE=flotilla haproxy -c -q -f k8s/overlays/prod/redis/haproxy.cfg ||
    fail "haproxy -c: k8s/overlays/prod/redis/haproxy.cfg"
  say "deploy: haproxy -c ok"
fi
sh -n k8s/overlays/prod/redis/init.sh || fail "sh -n k8s/overlays/prod/redis/init.sh"
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -s sh k8s/overlays/prod/redis/init.sh || fail "shellcheck init.sh"
  shellcheck scripts/validate-deploy.sh || fail "shellcheck validate-deploy.sh"
  say "deploy: shellcheck ok"
fi

# ---- 3. kubernetes ----------------------------------------------------------------------------

"$PY" "$TMP/check.py" dev-toml k8s/overlays/dev/flotilla.toml config/flotilla.toml ||
  fail "k8s/overlays/dev/flotilla.toml is out of sync with config/flotilla.toml"

for name in "${OVERLAY_NAMES[@]}"; do
  dir="${OVERLAY_DIRS[$name]}"
  say "k8s: $name ($dir)"
  "${KUSTOMIZE[@]}" "$dir" >"$TMP/$name.yaml" || fail "kustomize $dir"
  "$PY" "$TMP/check.py" k8s "$name" "$TMP/$name.yaml" "$TMP/$name.core.yaml" ||
    fail "k8s checks of $name"
  if ! kubernetes-validate -k "$K8S_VERSION" --strict --quiet "$TMP/$name.core.yaml" >"$TMP/$name.kv" 2>&1; then
    cat "$TMP/$name.kv" >&2
    fail "kubernetes-validate $name (Kubernetes $K8S_VERSION)"
  fi
  # Only CRD kinds were set aside: any other kind without a schema is an error here.
  if grep -q "Couldn't find schema" "$TMP/$name.kv"; then
    cat "$TMP/$name.kv" >&2
    fail "kubernetes-validate $name: kinds without a schema"
  fi
  say "k8s: $name: $(grep -c '^kind:' "$TMP/$name.core.yaml") objects valid against Kubernetes $K8S_VERSION (strict)"
done

say "compose ok, overlays ok: ${OVERLAY_NAMES[*]}"
