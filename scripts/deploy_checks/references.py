"""Services, PodDisruptionBudgets, autoscalers and NetworkPolicies point at something
that is rendered: a Deployment their selector selects, a port it names."""

from __future__ import annotations

from collections.abc import Iterator

from deploy_checks.manifests import Rendered, container_ports, name, ref


def check_references(r: Rendered) -> Iterator[str]:
    yield from _services(r)
    for pdb in r.by_kind("PodDisruptionBudget"):
        if not r.pods_selected(pdb["spec"]["selector"].get("matchLabels")):
            yield f"{ref(pdb)}: selector matches no Deployment"
    yield from _autoscalers(r)
    yield from _network_policies(r)


def _services(r: Rendered) -> Iterator[str]:
    for svc in r.services.values():
        sel = svc["spec"].get("selector") or {}
        targets = r.pods_selected(sel)
        if not targets:
            yield f"{ref(svc)}: selector {sel} matches no Deployment"
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            for t in targets:
                if isinstance(tp, str) and tp not in container_ports(r.deployment(t)):
                    yield f"{ref(svc)}: targetPort {tp} is not a port of Deployment/{t}"


def _autoscalers(r: Rendered) -> Iterator[str]:
    for hpa in r.by_kind("HorizontalPodAutoscaler"):
        t = hpa["spec"]["scaleTargetRef"]
        if t["kind"] != "Deployment" or t["name"] not in r.pod_labels:
            yield f"{ref(hpa)}: scale target {t['kind']}/{t['name']} is not rendered"
        if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
            yield f"{ref(hpa)}: minReplicas > maxReplicas"
        target = [d for d in r.deployments if name(d) == t["name"]]
        if any(d["spec"].get("replicas") is not None for d in target):
            yield (
                f"{ref(hpa)}: Deployment/{t['name']} also sets replicas (they would fight on apply)"
            )


def _network_policies(r: Rendered) -> Iterator[str]:
    for np in r.by_kind("NetworkPolicy"):
        targets = r.pods_selected(np["spec"]["podSelector"].get("matchLabels"))
        if not targets:
            yield f"{ref(np)}: podSelector matches no Deployment"
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p.get("port"), str) and not any(
                    p["port"] in container_ports(d) for d in r.deployments if name(d) in targets
                ):
                    yield f"{ref(np)}: port {p['port']} is not a port of the selected pods"
