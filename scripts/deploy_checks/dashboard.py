"""The Grafana dashboard: well-formed, every query on the Prometheus datasource variable
and naming only metrics creditgate exports; its queries (Grafana's variables
substituted) go to a rules file that ``promtool check rules`` parses."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# The metric names creditgate exports (fixed by the app's contract) plus Prometheus' own.
COUNTERS = ["requests", "refusals", "charged_microdollars", "sessions_started", "refunds",
            "redis_errors", "flushed_rows", "client_disconnects", "flush_quarantined",
            "projection_repairs"]  # fmt: skip
GAUGES = [
    "in_flight_requests",
    "flush_lag_seconds",
    "webhook_outbox_pending",
    "webhook_outbox_overdue",
    "clock_synced",
    "clock_offset_seconds",
]
HISTOGRAMS = ["admission_seconds", "upstream_seconds", "admission_batch_size"]
KNOWN = (
    {"up"}
    | {f"creditgate_{c}_total" for c in COUNTERS}
    | {f"creditgate_{g}" for g in GAUGES}
    | {f"creditgate_{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
)
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*"}


def metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(creditgate_[a-z_]+|up)\b(?=\s*[{\[)])", expr))


def check_dashboard(path: Path, rules_out: Path, alert_rules: Path) -> int:
    try:
        dash = json.loads(path.read_text())
    except ValueError as exc:
        print(f"  FAIL  {path}: {exc}")
        return 1
    problems = list(_form(dash))
    panels, exprs = _queries(dash, problems)
    for title, expr in exprs:
        problems += [f"panel {title!r}: unknown metric {m}" for m in metrics_in(expr) - KNOWN]
    record = []
    for i, (title, expr) in enumerate(exprs):
        e = expr
        for var, value in GRAFANA_VARIABLES.items():
            e = e.replace(var, value)
        if "$" in e.replace("{{", ""):
            problems.append(f"panel {title!r}: unsubstituted variable in {expr!r}")
        record.append({"record": f"dashboard:query_{i}", "expr": e})
    with rules_out.open("w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": record}]}, f)
    problems += _alert_metrics(alert_rules)
    for p in problems:
        print(f"  FAIL  {path}: {p}")
    if not problems:
        print(f"  ok    {path}: {panels} panels, {len(exprs)} queries, known metrics only")
    return 1 if problems else 0


def _form(dash: dict[str, Any]) -> Iterator[str]:
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            yield f"missing {key}"
    if dash.get("schemaVersion", 0) < 36:
        yield f"schemaVersion {dash.get('schemaVersion')} is older than 36"
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        yield "no Prometheus datasource variable named `datasource`"


def _queries(dash: dict[str, Any], problems: list[str]) -> tuple[int, list[tuple[str, str]]]:
    """(number of panel ids, (panel title, query) of every query); problems appended."""
    ids: set[Any] = set()
    exprs: list[tuple[str, str]] = []
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
        exprs += [(p.get("title"), t.get("expr", "")) for t in p.get("targets", [])]
    return len(ids), exprs


def _alert_metrics(alert_rules: Path) -> list[str]:
    try:
        groups = yaml.safe_load(alert_rules.read_text())["groups"]
    except OSError:
        return []
    return [
        f"alert {r.get('alert')}: unknown metric {m}"
        for g in groups
        for r in g["rules"]
        for m in metrics_in(r["expr"]) - KNOWN
    ]
