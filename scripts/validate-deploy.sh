#!/usr/bin/env bash
# Static validation of the deployment files; needs no Docker engine and no cluster.
#
#   scripts/validate-deploy.sh           # validate
#   scripts/validate-deploy.sh --sync    # copy the dashboard and alert rules into k8s/overlays/prod
#
# 1. docker-compose.yml: `docker-compose config` with and without the `observability` profile,
#    bind-mounted files exist, the worker's stop_grace_period exceeds FLOTILLA_GRACE_S, the
#    profile's Prometheus loads the alert rules and its Grafana provisions the dashboard.
# 2. deploy/: YAML parses; the Grafana dashboard and the alert rules are checked against the
#    metric catalogue deploy/flotilla-metrics.yaml (metric, label and label-value names, rule
#    structure, runbook sections in docs/deploy.md); promtool (config, rules, rule unit tests,
#    dashboard PromQL), haproxy and shellcheck checks when those tools exist.
# 3. k8s/: `kubectl kustomize` of base and every overlay, schema-validated with
#    kubernetes-validate (strict, fixed Kubernetes version, offline), CRD kinds checked
#    structurally instead, plus Flotilla's own invariants (drain budget, probes, security
#    context, placeholders-only Secrets, consumer_timeout, cross-references), and the dev
#    overlay's TOML still matching config/flotilla.toml, and the prod overlay's PrometheusRule
#    and dashboard ConfigMap still matching deploy/ (--sync rewrites them).
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

# ---- --sync: the k8s copies of the alert rules and the dashboard ------------------------------

RULES=deploy/prometheus/flotilla.rules.yml
DASHBOARD=deploy/grafana/dashboards/flotilla.json
K8S_RULES=k8s/overlays/prod/prometheusrule.yaml
K8S_DASHBOARD=k8s/overlays/prod/flotilla-dashboard.json

if [ "${1:-}" = "--sync" ]; then
  # kustomize reads no file outside an overlay: the overlay keeps copies, checked in step 3.
  "$PY" - "$RULES" "$K8S_RULES" "$DASHBOARD" "$K8S_DASHBOARD" <<'PY'
import shutil
import sys

rules, out, dash_src, dash_dst = sys.argv[1:5]
header = '''# Flotilla's alert rules for the Prometheus Operator (monitoring.coreos.com/v1).
# GENERATED below `spec:` from deploy/prometheus/flotilla.rules.yml: edit that file, then run
# scripts/validate-deploy.sh --sync (validate-deploy fails while the two differ).
# kube-prometheus-stack selects PrometheusRules by its release label (ruleSelector): set
# `release:` as in servicemonitor.yaml. What each alert means: docs/deploy.md, "Alerts".
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: flotilla
  labels:
    release: kube-prometheus-stack
spec:
'''
try:
    with open(out) as f:
        old = f.read().splitlines(keepends=True)
    for i, line in enumerate(old):
        if line.rstrip() == "spec:":
            header = "".join(old[: i + 1])  # keep local edits above spec (labels, name)
            break
except FileNotFoundError:
    pass
with open(rules) as f:
    lines = f.read().splitlines(keepends=True)
while lines and (lines[0].startswith("#") or not lines[0].strip()):
    lines.pop(0)  # the file's own header comment
with open(out, "w") as f:
    f.write(header + "".join("  " + line if line.strip() else line for line in lines))
shutil.copyfile(dash_src, dash_dst)
PY
  say "wrote $K8S_RULES from $RULES, copied $DASHBOARD to $K8S_DASHBOARD"
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--sync]" >&2
  exit 2
fi

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
import glob
import json
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
    if profile:
        check_compose_monitoring(services)
    finish()


# ---- kubernetes ------------------------------------------------------------------------------

# Kinds from CRDs: kubernetes-validate has no schema for them; checked structurally below.
CRD_REASONS = {
    ("keda.sh", "ScaledObject"): "KEDA CRD, schema not shipped with kubernetes-validate",
    ("keda.sh", "TriggerAuthentication"): "KEDA CRD, schema not shipped with kubernetes-validate",
    ("rabbitmq.com", "RabbitmqCluster"): "RabbitMQ Cluster Operator CRD, schema not shipped with kubernetes-validate",
    ("monitoring.coreos.com", "ServiceMonitor"): "Prometheus Operator CRD, schema not shipped with kubernetes-validate",
    ("monitoring.coreos.com", "PrometheusRule"): "Prometheus Operator CRD, schema not shipped with kubernetes-validate",
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
    check_k8s_monitoring(name, by_kind)
    finish()


# ---- monitoring: metric catalogue, PromQL, Grafana dashboard, alert rules ----------------------

METRICS_FILE = "deploy/flotilla-metrics.yaml"
RULES_FILE = "deploy/prometheus/flotilla.rules.yml"
DASHBOARD_FILE = "deploy/grafana/dashboards/flotilla.json"
DOCS_FILE = "docs/deploy.md"
# kube-prometheus-stack's Grafana sidecar loads ConfigMaps with this label.
DASHBOARD_CONFIGMAP, DASHBOARD_KEY, DASHBOARD_LABEL = "flotilla-grafana-dashboard", "flotilla.json", "grafana_dashboard"
SYNC_HINT = "edit the deploy/ file, then run scripts/validate-deploy.sh --sync"
# Every alert topic of issue 6 must have a rule that reads these series.
ALERT_REQUIRED_SERIES = {
    "flotilla_jobs_completed_total": "job error rate",
    "flotilla_job_queue_wait_seconds_bucket": "queue age",
    "flotilla_breaker_state": "breaker open",
    "flotilla_webhook_deliveries_total": "webhook final failures",
    "flotilla_webhook_attempts_total": "webhook 5xx/none share",
    "flotilla_drift_psi": "drift",
    "up": "target down",
}
SEVERITIES = {"warning", "critical"}
DURATION_RE = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar", "sgn",
    "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp",
    "vector", "year",
}
PROMQL_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                       "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "start", "end"}
PROMQL_CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\])
  | (?P<num>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z_]\w*)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>@:])
  | (?P<punct>[{}()\[\],])
""", re.X)
GRAFANA_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


class PromQLError(Exception):
    pass


class Scan:
    def __init__(self):
        self.selectors = []        # (metric name, [(label, op, value)])
        self.clause_labels = set()  # labels named in by/without/on/ignoring/group_*
        self.by_labels = set()
        self.aggregated = False
        self.without = False
        self.variables = set()     # Grafana variables, in strings too


def _unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", r"\1", s[1:-1])


def _vars(text):
    return {a or b or c for a, b, c in GRAFANA_VAR.findall(text)}


def promql_scan(expr):
    """A PromQL lexer and a shallow walk: metric selectors, matchers, grouping labels.
    Not a full parser (promtool is, when installed); catches unknown metrics and functions,
    bad matchers and unbalanced brackets."""
    toks, pos = [], 0
    while pos < len(expr):
        m = PROMQL_TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"unexpected {expr[pos]!r} at offset {pos}")
        pos = m.end()
        if m.lastgroup not in ("ws", "comment"):
            toks.append((m.lastgroup, m.group()))
    stack = []
    for kind, val in toks:
        if kind == "punct" and val in "([{":
            stack.append(val)
        elif kind == "punct" and val in ")]}":
            if not stack or stack.pop() != {")": "(", "]": "[", "}": "{"}[val]:
                raise PromQLError(f"unbalanced {val!r}")
    if stack:
        raise PromQLError(f"unclosed {stack[-1]!r}")
    if not toks:
        raise PromQLError("empty expression")

    s = Scan()
    for kind, val in toks:
        if kind == "var":
            s.variables |= _vars(val)
        elif kind == "str":
            s.variables |= _vars(val)

    def label_list(j):  # toks[j] == "("
        labels, j = [], j + 1
        while toks[j][1] != ")":
            if toks[j][0] == "ident":
                labels.append(toks[j][1])
            elif toks[j][1] != ",":
                raise PromQLError(f"unexpected {toks[j][1]!r} in a label list")
            j += 1
        return labels, j + 1

    def matchers(j):  # toks[j] == "{"
        out, j = [], j + 1
        while toks[j][1] != "}":
            if toks[j][1] == ",":
                j += 1
                continue
            if toks[j][0] == "str":  # {"metric.name"} (Prometheus 3 quoted name)
                out.append(("__name__", "=", _unquote(toks[j][1])))
                j += 1
                continue
            if j + 2 >= len(toks):
                raise PromQLError("truncated label matcher")
            (lk, label), (_, op), (vk, value) = toks[j], toks[j + 1], toks[j + 2]
            if lk != "ident" or op not in ("=", "!=", "=~", "!~") or vk != "str":
                raise PromQLError(f"bad label matcher at {label!r}")
            out.append((label, op, _unquote(value)))
            j += 3
        return out, j + 1

    i, n = 0, len(toks)
    while i < n:
        kind, val = toks[i]
        nxt = toks[i + 1][1] if i + 1 < n else None
        if kind == "punct" and val == "[":  # range or subquery: durations and variables only
            depth = 0
            while True:
                if toks[i] == ("punct", "["):
                    depth += 1
                elif toks[i] == ("punct", "]"):
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        elif kind == "punct" and val == "{":
            ms, i = matchers(i)
            names = [v for (lbl, o, v) in ms if lbl == "__name__" and o == "="]
            if not names:
                raise PromQLError("selector without a metric name")
            s.selectors.append((names[0], [x for x in ms if x[0] != "__name__"]))
        elif kind == "ident":
            if val in PROMQL_CLAUSES:
                if val in ("by", "without"):
                    s.aggregated = True
                    s.without |= val == "without"
                if nxt == "(":
                    labels, i = label_list(i + 1)
                    s.clause_labels.update(labels)
                    if val == "by":
                        s.by_labels.update(labels)
                elif val in ("group_left", "group_right"):
                    i += 1
                else:
                    raise PromQLError(f"{val} without a label list")
            elif val.lower() in PROMQL_KEYWORDS:
                i += 1
            elif val in PROMQL_AGGREGATIONS and nxt in ("(", "by", "without"):
                s.aggregated = True
                i += 1
            elif nxt == "(":
                if val not in PROMQL_FUNCTIONS:
                    raise PromQLError(f"unknown function {val}()")
                i += 1
            elif nxt == "{":
                ms, i = matchers(i + 1)
                s.selectors.append((val, ms))
            else:
                s.selectors.append((val, []))
                i += 1
        else:
            i += 1
    return s


class Catalogue:
    """deploy/flotilla-metrics.yaml: series name -> {label: allowed values or None}."""

    def __init__(self, path):
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        self.target_labels = set(cfg.get("target_labels") or [])
        self.series, self.histograms, self.metrics = {}, set(), {}
        for section in ("builtin", "metrics"):
            for name, m in (cfg.get(section) or {}).items():
                labels = {lbl: ({str(v) for v in vals} if vals else None)
                          for lbl, vals in ((m or {}).get("labels") or {}).items()}
                labels.update({t: None for t in self.target_labels})
                kind = (m or {}).get("type")
                if kind == "histogram":
                    self.histograms.add(name)
                    names = {name + "_bucket": {**labels, "le": None},
                             name + "_sum": labels, name + "_count": labels}
                elif kind in ("counter", "gauge"):
                    if (kind == "counter") != name.endswith("_total"):
                        err(f"{path}: {name}: counters, and only counters, end in _total")
                    names = {name: labels}
                else:
                    err(f"{path}: {name}: type must be counter, gauge or histogram")
                    continue
                if section == "metrics" and not name.startswith("flotilla_"):
                    err(f"{path}: {name}: Flotilla's metrics are named flotilla_*")
                self.series.update(names)
                if section == "metrics":
                    self.metrics[name] = set(names)


def _value_allowed(allowed, op, value):
    if op in ("=", "!="):
        return value in allowed
    if re.fullmatch(r"[\w|]+", value):
        return all(v in allowed for v in value.split("|"))
    try:
        rx = re.compile(value)
    except re.error:
        return False
    return any(rx.fullmatch(v) for v in allowed)


def analyse(where, expr, cat, used):
    """Checks one PromQL expression against the catalogue; returns its Scan or None."""
    try:
        s = promql_scan(expr)
    except PromQLError as e:
        err(f"{where}: PromQL: {e}: {' '.join(expr.split())}")
        return None
    known = set()
    for name, ms in s.selectors:
        spec = cat.series.get(name)
        if spec is None:
            hint = f" (a histogram: use {name}_bucket, _sum or _count)" if name in cat.histograms else ""
            err(f"{where}: metric {name} is not in {METRICS_FILE}{hint}")
            continue
        used.add(name)
        if spec == "*":  # recorded by a rule of ours: labels not described
            continue
        known |= set(spec)
        for label, op, value in ms:
            if label not in spec:
                err(f"{where}: {name} has no label {label!r} (labels: {', '.join(sorted(spec))})")
            elif spec[label] and "$" not in value and not _value_allowed(spec[label], op, value):
                err(f"{where}: {name}{{{label}{op}{value!r}}}: {label} is one of {sorted(spec[label])}")
    if known:
        for label in sorted(s.clause_labels - known):
            err(f"{where}: grouping label {label!r} is on none of the metrics of: {' '.join(expr.split())}")
    return s


def doc_anchors(path):
    """GitHub's heading anchors of a Markdown file (outside code fences)."""
    anchors, fence = set(), False
    with open(path) as f:
        for line in f:
            if line.lstrip().startswith("```"):
                fence = not fence
                continue
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m and not fence:
                text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
                anchors.add(text.replace(" ", "-"))
    return anchors


def rules_groups(path):
    with open(path) as f:
        return (yaml.safe_load(f) or {}).get("groups")


def check_rules(path, cat, docs_path):
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except yaml.YAMLError as e:
        err(f"{path}: not YAML: {e}")
        return
    if not isinstance(cfg, dict) or set(cfg) != {"groups"}:
        err(f"{path}: the top level must be exactly `groups:`")
        return
    groups = cfg["groups"]
    if not isinstance(groups, list) or not groups:
        err(f"{path}: groups must be a non-empty list")
        return
    anchors = doc_anchors(docs_path)
    group_names, alert_names, used, count = set(), set(), set(), 0
    for g in groups:
        if not isinstance(g, dict):
            err(f"{path}: a group is not a mapping")
            continue
        gname = g.get("name")
        if not isinstance(gname, str) or not gname:
            err(f"{path}: a group has no name")
        elif gname in group_names:
            err(f"{path}: group {gname} is defined twice")
        group_names.add(gname)
        extra = set(g) - {"name", "interval", "rules", "limit", "query_offset", "labels"}
        if extra:
            err(f"{path}: group {gname}: unknown keys {sorted(extra)}")
        if "interval" in g and not DURATION_RE.fullmatch(str(g["interval"])):
            err(f"{path}: group {gname}: interval {g['interval']!r} is not a duration")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            err(f"{path}: group {gname}: rules must be a non-empty list")
            continue
        for r in rules:
            count += 1
            if not isinstance(r, dict):
                err(f"{path}: group {gname}: a rule is not a mapping")
                continue
            if "record" in r:
                extra = set(r) - {"record", "expr", "labels"}
                if extra or not isinstance(r.get("expr"), str):
                    err(f"{path}: recording rule {r['record']}: needs expr, allows labels only")
                    continue
                if analyse(f"{path}: {r['record']}", r["expr"], cat, used) is not None:
                    cat.series[r["record"]] = "*"
                continue
            name = r.get("alert")
            where = f"{path}: {name}"
            if not isinstance(name, str) or not re.fullmatch(r"Flotilla[A-Z][A-Za-z0-9]*", name):
                err(f"{path}: group {gname}: alert name {name!r} must be Flotilla<CamelCase>")
            elif name in alert_names:
                err(f"{where}: defined twice")
            alert_names.add(name)
            extra = set(r) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            if extra:
                err(f"{where}: unknown keys {sorted(extra)}")
            expr = r.get("expr")
            scan = None
            if not isinstance(expr, str) or not expr.strip():
                err(f"{where}: no expr")
            else:
                scan = analyse(where, expr, cat, used)
            if not DURATION_RE.fullmatch(str(r.get("for", ""))):
                err(f"{where}: `for` must be a duration such as 10m (got {r.get('for')!r})")
            labels = r.get("labels") or {}
            if labels.get("severity") not in SEVERITIES:
                err(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}")
            for k, v in labels.items():
                if not isinstance(v, str):
                    err(f"{where}: label {k} must be a string")
            ann = r.get("annotations") or {}
            for key in ("summary", "description"):
                if not isinstance(ann.get(key), str) or not ann[key].strip():
                    err(f"{where}: annotations.{key} is missing")
            desc = str(ann.get("description", ""))
            if "$labels" not in desc and "$value" not in desc:
                err(f"{where}: annotations.description must use {{{{ $labels.* }}}} or {{{{ $value }}}}")
            for key, text in ann.items():
                text = str(text)
                if text.count("{{") != text.count("}}"):
                    err(f"{where}: annotations.{key}: unbalanced {{{{ }}}}")
                if scan is not None:
                    if scan.aggregated and not scan.without:
                        avail = scan.by_labels
                    else:
                        avail = {lbl for n_, _ in scan.selectors for lbl in (cat.series.get(n_) or {})
                                 if cat.series.get(n_) != "*"} or {"*"}
                    for lbl in re.findall(r"\$labels\.(\w+)", text):
                        if "*" not in avail and lbl not in avail:
                            err(f"{where}: annotations.{key} uses $labels.{lbl}, which the expr does not keep ({sorted(avail)})")
            rb = ann.get("runbook_url")
            m = re.fullmatch(r"docs/deploy\.md#([\w-]+)", str(rb or ""))
            if not m:
                err(f"{where}: annotations.runbook_url must be docs/deploy.md#<section>")
            elif m.group(1) not in anchors:
                err(f"{where}: runbook_url {rb}: no such heading in {docs_path}")
    for series, topic in ALERT_REQUIRED_SERIES.items():
        if series not in used:
            err(f"{path}: no alert reads {series} ({topic})")
    info(f"{path}: {len(groups)} groups, {count} rules; metrics, labels and runbook sections known")


def check_dashboard(path, cat, promtool_out):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        err(f"{path}: not valid JSON: {e}")
        return
    for key in ("title", "uid"):
        if not d.get(key):
            err(f"{path}: no {key}")
    if int(d.get("schemaVersion") or 0) < 38:
        err(f"{path}: schemaVersion {d.get('schemaVersion')} is older than Grafana 10's (38)")
    templ = (d.get("templating") or {}).get("list") or []
    var_names = {v.get("name") for v in templ}
    dsvar = [v for v in templ if v.get("name") == "datasource"]
    if not dsvar or dsvar[0].get("type") != "datasource" or dsvar[0].get("query") != "prometheus":
        err(f"{path}: needs a template variable `datasource` of type datasource, query prometheus")
    ds_ok = lambda ds: isinstance(ds, dict) and ds.get("uid") == "${datasource}"  # noqa: E731
    exprs, used = [], set()
    for v in templ:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        where = f"{path}: variable {v.get('name')}"
        if not ds_ok(v.get("datasource")):
            err(f"{where}: datasource must be ${{datasource}}")
        for q in {q.get("query") if isinstance(q, dict) else q, v.get("definition") or None} - {None}:
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
            if not m:
                err(f"{where}: only label_values(<metric>, <label>) queries are checked; got {q!r}")
                continue
            s = analyse(where, m.group(1), cat, used)
            for name, _ in s.selectors if s else []:
                spec = cat.series.get(name)
                if isinstance(spec, dict) and m.group(2) not in spec:
                    err(f"{where}: {name} has no label {m.group(2)}")
    flat = []
    for p in d.get("panels") or []:
        flat.append((p, True))
        flat.extend((c, False) for c in p.get("panels") or [])  # inside collapsed rows
    ids, cells, npanels = set(), {}, 0
    for p, top in flat:
        pid, title = p.get("id"), p.get("title", "")
        where = f"{path}: panel {pid} {title!r}"
        if pid in ids:
            err(f"{where}: duplicate panel id")
        ids.add(pid)
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")):
            err(f"{where}: gridPos needs integer h, w, x, y")
        elif gp["x"] + gp["w"] > 24:
            err(f"{where}: wider than the 24-column grid")
        elif top:
            mine = {(xx, yy) for yy in range(gp["y"], gp["y"] + gp["h"])
                    for xx in range(gp["x"], gp["x"] + gp["w"])}
            hit = sorted({cells[c] for c in mine if c in cells}, key=str)
            if hit:
                err(f"{where}: overlaps panel(s) {', '.join(map(str, hit))}")
            cells.update({c: pid for c in mine})
        if p.get("type") == "row":
            continue
        npanels += 1
        if not ds_ok(p.get("datasource")):
            err(f"{where}: datasource must be ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            err(f"{where}: no queries")
        refs = set()
        for t in targets:
            ref = t.get("refId")
            if ref in refs:
                err(f"{where}: duplicate refId {ref}")
            refs.add(ref)
            if "datasource" in t and not ds_ok(t["datasource"]):
                err(f"{where} {ref}: datasource must be ${{datasource}}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                err(f"{where} {ref}: no expr")
                continue
            s = analyse(f"{where} {ref}", expr, cat, used)
            if s:
                for var in sorted(s.variables):
                    if not var.startswith("__") and var not in var_names:
                        err(f"{where} {ref}: undefined variable ${var}")
            exprs.append((f"panel{pid}_{ref}", expr))
    for metric, names in sorted(cat.metrics.items()):
        if not names & used:
            err(f"{path}: no panel shows {metric}")
    # For promtool (when installed): every panel query as a recording rule, variables filled in.
    rules = []
    for rec, expr in exprs:
        e = re.sub(r"\$\{?__(rate_interval|interval|range)(_s|_ms)?\}?", "5m", expr)
        e = GRAFANA_VAR.sub(".*", e)
        rules.append({"record": f"dashboard:{rec}", "expr": e})
    with open(promtool_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)
    info(f"{path}: {npanels} panels, {len(exprs)} queries; every metric of {METRICS_FILE} shown")


def check_monitoring(promtool_out):
    cat = Catalogue(METRICS_FILE)
    check_rules(RULES_FILE, cat, DOCS_FILE)
    check_dashboard(DASHBOARD_FILE, cat, promtool_out)
    finish()


def host_path(svc, path):
    """The host file behind a container path, through the service's bind mounts."""
    best = None
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            src, dst, kind = vol.get("source"), vol.get("target"), vol.get("type")
        else:
            parts = str(vol).split(":")
            src, dst = parts[0], parts[1] if len(parts) > 1 else parts[0]
            kind = "bind" if src.startswith(("/", ".")) else "volume"
        if kind == "bind" and (path == dst or path.startswith(dst.rstrip("/") + "/")):
            if best is None or len(dst) > len(best[1]):
                best = (src, dst)
    return None if best is None else best[0] + path[len(best[1]):]


def check_compose_monitoring(services):
    """The observability profile loads the alert rules and provisions the dashboard."""
    prom = services.get("prometheus", {})
    conf = next((c.split("=", 1)[1] for c in prom.get("command") or []
                 if str(c).startswith("--config.file=")), "/etc/prometheus/prometheus.yml")
    conf_host = host_path(prom, conf)
    if not conf_host or not os.path.isfile(conf_host):
        err(f"compose: prometheus: {conf} is not bind-mounted from the repository")
        return
    with open(conf_host) as f:
        pcfg = yaml.safe_load(f) or {}
    loaded = set()
    for pattern in pcfg.get("rule_files") or []:
        hp = host_path(prom, pattern)
        if hp is None:
            err(f"compose: prometheus: rule_files {pattern} is not bind-mounted")
            continue
        loaded |= {os.path.realpath(p) for p in glob.glob(hp)}
    if os.path.realpath(RULES_FILE) not in loaded:
        err(f"compose: prometheus does not load {RULES_FILE} (rule_files + volumes)")
    for p in loaded:
        if p.endswith(".test.yml"):
            err(f"compose: prometheus rule_files also match the unit tests {p}")
    graf = services.get("grafana", {})
    prov = host_path(graf, "/etc/grafana/provisioning")
    dirs, has_prom_ds = set(), False
    for f_ in glob.glob(os.path.join(prov or "/nonexistent", "dashboards", "*.y*ml")):
        with open(f_) as f:
            for prv in (yaml.safe_load(f) or {}).get("providers") or []:
                hp = host_path(graf, ((prv.get("options") or {}).get("path")) or "")
                if hp:
                    dirs.add(os.path.realpath(hp))
    for f_ in glob.glob(os.path.join(prov or "/nonexistent", "datasources", "*.y*ml")):
        with open(f_) as f:
            has_prom_ds |= any(ds.get("type") == "prometheus"
                               for ds in (yaml.safe_load(f) or {}).get("datasources") or [])
    if os.path.dirname(os.path.realpath(DASHBOARD_FILE)) not in dirs:
        err(f"compose: grafana does not provision {DASHBOARD_FILE} (provisioning/dashboards + volumes)")
    if not has_prom_ds:
        err("compose: grafana has no provisioned prometheus datasource")


def check_k8s_monitoring(name, by_kind):
    rules = by_kind.get("PrometheusRule", {})
    want_groups = rules_groups(RULES_FILE)
    for pr_name, pr in rules.items():
        if (pr.get("spec") or {}).get("groups") != want_groups:
            err(f"{name}: PrometheusRule {pr_name}: spec.groups differ from {RULES_FILE}: {SYNC_HINT}")
        else:
            info(f"PrometheusRule {pr_name}: spec.groups = {RULES_FILE}")
    with open(DASHBOARD_FILE) as f:
        want_dash = json.load(f)
    dash_cms = {n: cm for n, cm in by_kind.get("ConfigMap", {}).items()
                if (cm["metadata"].get("labels") or {}).get(DASHBOARD_LABEL)}
    for cm_name, cm in dash_cms.items():
        raw = (cm.get("data") or {}).get(DASHBOARD_KEY)
        try:
            same = raw is not None and json.loads(raw) == want_dash
        except ValueError:
            same = False
        if not same:
            err(f"{name}: ConfigMap {cm_name}: {DASHBOARD_KEY} differs from {DASHBOARD_FILE}: {SYNC_HINT}")
        else:
            info(f"ConfigMap {cm_name}: {DASHBOARD_KEY} = {DASHBOARD_FILE}")
    monitors = by_kind.get("ServiceMonitor", {})
    if monitors:  # where the Prometheus Operator is a prerequisite, alerts and dashboard come along
        if "flotilla" not in rules:
            err(f"{name}: ServiceMonitors but no PrometheusRule flotilla")
        if DASHBOARD_CONFIGMAP not in dash_cms:
            err(f"{name}: ServiceMonitors but no ConfigMap {DASHBOARD_CONFIGMAP} labelled {DASHBOARD_LABEL}")
        releases = {(o["metadata"].get("labels") or {}).get("release")
                    for o in list(monitors.values()) + list(rules.values())}
        if len(releases) > 1:
            err(f"{name}: ServiceMonitors and PrometheusRules carry different release labels {sorted(map(str, releases))}")


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
    elif mode == "monitoring":
        check_monitoring(sys.argv[2])
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

for f in deploy/*.yaml deploy/*.yml deploy/prometheus/*.yml deploy/grafana/provisioning/*/*.yaml; do
  [ -e "$f" ] || continue
  "$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$f" || fail "$f is not valid YAML"
done

# Dashboard and alert rules against the metric catalogue: always (Python, offline).
say "monitoring: $DASHBOARD and $RULES against deploy/flotilla-metrics.yaml"
"$PY" "$TMP/check.py" monitoring "$TMP/dashboard-queries.yml" || fail "monitoring checks"

# promtool: the real PromQL parser, and the alert rules' unit tests. Optional (Debian:
# apt-get install prometheus); not installed here on purpose.
promtool_run() {
  local what="$1"
  shift
  if ! promtool "$@" >"$TMP/promtool.out" 2>&1; then
    cat "$TMP/promtool.out" >&2
    fail "promtool $what"
  fi
}
if command -v promtool >/dev/null 2>&1; then
  promtool_run "check config deploy/prometheus.yml" check config --syntax-only deploy/prometheus.yml
  promtool_run "check rules" check rules deploy/prometheus/*.rules.yml
  promtool_run "test rules" test rules deploy/prometheus/*.rules.test.yml
  promtool_run "check rules (the dashboard's queries)" check rules "$TMP/dashboard-queries.yml"
  say "deploy: promtool check config, check rules (alerts and dashboard queries), test rules ok"
else
  say "deploy: promtool not installed (Debian: apt-get install prometheus): PromQL checked by the Python lexer only, alert unit tests not run"
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

say "compose ok, monitoring ok, overlays ok: ${OVERLAY_NAMES[*]}"
