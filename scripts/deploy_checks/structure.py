"""Structural checks on one rendered overlay. Writes to the output directory
``core.yaml`` (the built-in kinds, for kubernetes-validate), ``prometheusrule.rules.yaml``
(the PrometheusRules' groups, if any) and ``env-<deployment>.env`` (the settings of each
creditgate container, for the settings check)."""

from __future__ import annotations

from pathlib import Path

import yaml

from deploy_checks.manifests import CRD_KINDS, Rendered, ref
from deploy_checks.monitoring import check_prometheus_rules, check_service_monitors
from deploy_checks.references import check_references
from deploy_checks.workloads import check_deployments

LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by")


def check_structure(rendered: Path, overlay: str, external: str, outdir: Path) -> int:
    r = Rendered.load(rendered, external)
    core = [d for d in r.docs if d.get("kind") not in CRD_KINDS]
    with (outdir / "core.yaml").open("w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    problems = [
        # Labels: every object says what it is and what it belongs to.
        *(
            f"{ref(d)}: missing label {key}"
            for d in r.docs
            for key in LABELS
            if key not in (d.get("metadata", {}).get("labels") or {})
        ),
        *check_deployments(r, outdir),
        *check_references(r),
        *check_service_monitors(r),
        *check_prometheus_rules(r, outdir),
    ]
    for p in problems:
        print(f"  FAIL  {overlay}: {p}")
    if not problems:
        print(f"  ok    {overlay}: structure and cross-references ({len(r.docs)} objects)")
    return 1 if problems else 0
