"""One rendered kustomize overlay, loaded, with the look-ups the checks share."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

# The Prometheus Operator kinds: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def name(d: Doc) -> str:
    return str(d.get("metadata", {}).get("name", "?"))


def ref(d: Doc) -> str:
    return f"{d.get('kind')}/{name(d)}"


def matches(selector: dict[str, Any] | None, labels: dict[str, Any]) -> bool:
    """Whether a (non-empty) label selector selects ``labels``."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def container_ports(dep: Doc) -> dict[str | None, int]:
    """Named container ports of a Deployment's pod."""
    spec = dep["spec"]["template"]["spec"]
    return {
        p.get("name"): p["containerPort"]
        for c in spec.get("containers", [])
        for p in c.get("ports", [])
    }


@dataclass
class Rendered:
    """The objects of one overlay and the Secrets expected to exist outside it."""

    docs: list[Doc]
    external: set[str]

    @classmethod
    def load(cls, path: Path, external: str) -> Rendered:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        return cls(docs, {s for s in external.split(",") if s})

    def by_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d.get("kind") == kind]

    @cached_property
    def deployments(self) -> list[Doc]:
        return self.by_kind("Deployment")

    @cached_property
    def pod_labels(self) -> dict[str, dict[str, Any]]:
        return {
            name(d): d["spec"]["template"]["metadata"].get("labels", {}) for d in self.deployments
        }

    @cached_property
    def config_maps(self) -> dict[str, Doc]:
        return {name(d): d for d in self.by_kind("ConfigMap")}

    @cached_property
    def secrets(self) -> dict[str, Doc]:
        return {name(d): d for d in self.by_kind("Secret")}

    @cached_property
    def services(self) -> dict[str, Doc]:
        return {name(d): d for d in self.by_kind("Service")}

    def pods_selected(self, selector: dict[str, Any] | None) -> list[str]:
        """Names of the Deployments whose pods ``selector`` selects."""
        return [n for n, labels in self.pod_labels.items() if matches(selector, labels)]

    def deployment(self, dep_name: str) -> Doc:
        return next(d for d in self.deployments if name(d) == dep_name)
