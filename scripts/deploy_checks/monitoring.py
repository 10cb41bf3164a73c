"""The Prometheus Operator kinds, which kubernetes-validate has no schema for: the
structure and references of ServiceMonitors and PrometheusRules, checked by hand."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from deploy_checks.manifests import Doc, Rendered, matches, ref

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
API_VERSION = "monitoring.coreos.com/v1"
SPEC_KEYS = {
    "selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
    "podTargetLabels", "sampleLimit", "targetLimit", "scrapeProtocols", "attachMetadata",
    "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "keepDroppedTargets",
    "scrapeClass", "bodySizeLimit",
}  # fmt: skip
ENDPOINT_KEYS = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig",
    "bearerTokenFile", "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps",
    "trackTimestampsStaleness", "basicAuth", "oauth2", "metricRelabelings", "relabelings",
    "proxyUrl", "followRedirects", "enableHttp2", "filterRunning",
}  # fmt: skip
GROUP_KEYS = {
    "name", "interval", "rules", "partial_response_strategy", "limit", "query_offset", "labels"
}  # fmt: skip
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}


def seconds(duration: str) -> float:
    return sum(int(n) * UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def check_service_monitors(r: Rendered) -> Iterator[str]:
    for sm in r.by_kind("ServiceMonitor"):
        if sm.get("apiVersion") != API_VERSION:
            yield f"{ref(sm)}: apiVersion {sm.get('apiVersion')}"
        spec = sm.get("spec") or {}
        extra = set(spec) - SPEC_KEYS
        if extra:
            yield f"{ref(sm)}: unknown spec fields {sorted(extra)}"
        sel = (spec.get("selector") or {}).get("matchLabels")
        selected = [
            s for s in r.services.values() if matches(sel, s["metadata"].get("labels") or {})
        ]
        if not selected:
            yield f"{ref(sm)}: selector {sel} matches no Service"
        if not spec.get("endpoints"):
            yield f"{ref(sm)}: no endpoints"
        for ep in spec.get("endpoints") or []:
            yield from _endpoint(sm, ep, selected)


def _endpoint(sm: Doc, ep: dict[str, Any], selected: list[Doc]) -> Iterator[str]:
    if set(ep) - ENDPOINT_KEYS:
        yield f"{ref(sm)}: unknown endpoint fields {sorted(set(ep) - ENDPOINT_KEYS)}"
    if not any(p.get("name") == ep.get("port") for s in selected for p in s["spec"]["ports"]):
        yield (
            f"{ref(sm)}: endpoint port {ep.get('port')} is not a named port of the selected Service"
        )
    for key in ("interval", "scrapeTimeout"):
        if key in ep and not DURATION.match(ep[key]):
            yield f"{ref(sm)}: {key} {ep[key]!r} is not a duration"
    if (
        "interval" in ep
        and "scrapeTimeout" in ep
        and seconds(ep["scrapeTimeout"]) > seconds(ep["interval"])
    ):
        yield f"{ref(sm)}: scrapeTimeout exceeds interval"


def check_prometheus_rules(r: Rendered, outdir: Path) -> Iterator[str]:
    """The PrometheusRules' structure; their groups go to ``prometheusrule.rules.yaml``
    for ``promtool``."""
    rules = r.by_kind("PrometheusRule")
    for pr in rules:
        if pr.get("apiVersion") != API_VERSION:
            yield f"{ref(pr)}: apiVersion {pr.get('apiVersion')}"
        spec = pr.get("spec") or {}
        if set(spec) != {"groups"}:
            yield f"{ref(pr)}: spec must hold exactly `groups`, has {sorted(spec)}"
        for g in spec.get("groups") or []:
            yield from _group(pr, g)
    if rules:
        groups = [g for pr in rules for g in pr["spec"]["groups"]]
        with (outdir / "prometheusrule.rules.yaml").open("w") as f:
            yaml.safe_dump({"groups": groups}, f, sort_keys=False)


def _group(pr: Doc, g: dict[str, Any]) -> Iterator[str]:
    if set(g) - GROUP_KEYS:
        yield f"{ref(pr)}: group {g.get('name')}: unknown fields"
    for rule in g.get("rules") or []:
        if set(rule) - RULE_KEYS:
            yield f"{ref(pr)}: rule {rule.get('alert') or rule.get('record')}: unknown fields"
        if rule.get("alert") and not (rule.get("annotations") or {}).get("summary"):
            yield f"{ref(pr)}: alert {rule['alert']} has no summary annotation"
        severity = (rule.get("labels") or {}).get("severity")
        if rule.get("alert") and severity not in ("critical", "warning", "info"):
            yield f"{ref(pr)}: alert {rule['alert']} has no severity label"


def extract_rules(source: Path, rules_out: Path, test_out: Path) -> int:
    """The base PrometheusRule's ``.spec`` as a rules file, and a copy without the
    annotations for ``promtool test rules`` (the unit tests assert alerts and labels;
    ``promtool check rules`` already parses the annotation templates)."""
    spec = yaml.safe_load(source.read_text())["spec"]
    with rules_out.open("w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    with test_out.open("w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return 0
