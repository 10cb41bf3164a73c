"""Checks on the Deployments of an overlay: hardening, resources, probes, the ConfigMaps
and Secrets they reference, and for the creditgate container its settings (written out
for the settings check) and its shutdown timing."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy_checks.manifests import Doc, Rendered, container_ports, matches, name, ref


def check_deployments(r: Rendered, outdir: Path) -> Iterator[str]:
    for dep in r.deployments:
        yield from _pod(r, dep)
        pod = dep["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            where = f"{ref(dep)} container {c['name']}"
            yield from _hardening(where, c, pod.get("securityContext") or {})
            yield from _resources_and_mounts(where, c, pod, container_ports(dep))
            yield from _references(r, where, c)
        main = next((c for c in pod.get("containers", []) if c["name"] == "creditgate"), None)
        if main is not None:
            yield from _creditgate(r, dep, main, outdir)


def _pod(r: Rendered, dep: Doc) -> Iterator[str]:
    spec = dep["spec"]
    selector = spec["selector"].get("matchLabels")
    if selector and not matches(selector, r.pod_labels[name(dep)]):
        yield f"{ref(dep)}: selector does not match its pod template"
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext") or {}
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        yield f"{ref(dep)}: pod seccompProfile is not RuntimeDefault"
    if pod.get("automountServiceAccountToken") is not False:
        yield f"{ref(dep)}: automountServiceAccountToken is not false"
    # A Service named creditgate[-*] would inject CREDITGATE_*_PORT/_HOST variables
    # into the settings namespace.
    if pod.get("enableServiceLinks") is not False and any(
        s.startswith("creditgate") for s in r.services
    ):
        yield (
            f"{ref(dep)}: enableServiceLinks must be false "
            "(Service env vars collide with CREDITGATE_*)"
        )


def _hardening(where: str, c: Doc, psc: Doc) -> Iterator[str]:
    sc = c.get("securityContext") or {}
    if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
        yield f"{where}: runAsNonRoot is not true"
    if sc.get("readOnlyRootFilesystem") is not True:
        yield f"{where}: readOnlyRootFilesystem is not true"
    if sc.get("allowPrivilegeEscalation") is not False:
        yield f"{where}: allowPrivilegeEscalation is not false"
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        yield f"{where}: capabilities do not drop ALL"


def _resources_and_mounts(
    where: str, c: Doc, pod: Doc, ports: dict[str | None, int]
) -> Iterator[str]:
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                yield f"{where}: no {kind}.{r}"
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if m["name"] not in volumes:
            yield f"{where}: mounts undefined volume {m['name']}"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
        if isinstance(port, str) and port not in ports:
            yield f"{where}: {probe} uses unknown port name {port}"


def _references(r: Rendered, where: str, c: Doc) -> Iterator[str]:
    for e in c.get("envFrom", []):
        cm = (e.get("configMapRef") or {}).get("name")
        if cm and cm not in r.config_maps:
            yield f"{where}: envFrom ConfigMap {cm} is not rendered"
        sec = (e.get("secretRef") or {}).get("name")
        if sec and sec not in r.secrets and sec not in r.external:
            yield f"{where}: envFrom Secret {sec} is not rendered nor expected"
    for e in c.get("env", []):
        skr = (e.get("valueFrom") or {}).get("secretKeyRef")
        if not skr:
            continue
        s = skr["name"]
        if s in r.secrets:
            data = {**(r.secrets[s].get("data") or {}), **(r.secrets[s].get("stringData") or {})}
            if skr["key"] not in data and not skr.get("optional"):
                yield f"{where}: Secret {s} has no key {skr['key']}"
        elif s not in r.external:
            yield f"{where}: Secret {s} is not rendered nor expected to exist"


def _creditgate(r: Rendered, dep: Doc, main: Doc, outdir: Path) -> Iterator[str]:
    """The creditgate container: its settings, written to ``env-<deployment>.env`` for
    the settings check, and graceful shutdown."""
    env: dict[str, str] = {}
    for e in main.get("envFrom", []):
        cm = r.config_maps.get(str((e.get("configMapRef") or {}).get("name")), {})
        for k, v in (cm.get("data") or {}).items():
            if not k.startswith("CREDITGATE_"):
                yield f"ConfigMap/{name(cm)}: key {k} is not a CREDITGATE_* setting"
            env[k] = str(v)
    secret_env = _secret_env(r, main, env)
    with (outdir / f"env-{name(dep)}.env").open("w") as f:
        for k, v in sorted({**env, **secret_env}.items()):
            f.write(f"{k}={v}\n")
    yield from _shutdown(dep, main, env)
    yield from _settings_fit(r, dep, env, secret_env)


def _secret_env(r: Rendered, main: Doc, env: dict[str, str]) -> dict[str, str]:
    """Variables from Secrets (``@external:<key>`` for a Secret kept outside git); plain
    ``value`` variables go into ``env``."""
    secret_env: dict[str, str] = {}
    for e in main.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        skr = (e.get("valueFrom") or {}).get("secretKeyRef")
        if skr and skr["name"] in r.secrets:
            s = r.secrets[skr["name"]]
            if skr["key"] in (s.get("stringData") or {}):
                secret_env[e["name"]] = s["stringData"][skr["key"]]
            elif skr["key"] in (s.get("data") or {}):
                secret_env[e["name"]] = base64.b64decode(s["data"][skr["key"]]).decode()
        elif skr and not skr.get("optional"):  # an optional one may well be absent
            secret_env[e["name"]] = "@external:" + skr["key"]
    return secret_env


def _shutdown(dep: Doc, main: Doc, env: dict[str, str]) -> Iterator[str]:
    pod = dep["spec"]["template"]["spec"]
    grace = float(env.get("CREDITGATE_SHUTDOWN_GRACE_S", "20"))
    pre: Any = (main.get("lifecycle") or {}).get("preStop") or {}
    cmd = (pre.get("exec") or {}).get("command") or []
    pre_stop = float(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else 0.0
    if not pre_stop:
        yield f"{ref(dep)}: no preStop sleep to let endpoints drain before SIGTERM"
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps <= pre_stop + grace:
        yield (
            f"{ref(dep)}: terminationGracePeriodSeconds {tgps} <= preStop {pre_stop} "
            f"+ shutdown grace {grace}"
        )


def _settings_fit(
    r: Rendered, dep: Doc, env: dict[str, str], secret_env: dict[str, str]
) -> Iterator[str]:
    ports = container_ports(dep)
    for port_key, port_name in (
        ("CREDITGATE_TRAFFIC_PORT", "http"),
        ("CREDITGATE_ADMIN_PORT", "admin"),
    ):
        if port_key in env and int(env[port_key]) != ports.get(port_name):
            yield (
                f"{ref(dep)}: {port_key}={env[port_key]} but container port {port_name} "
                f"is {ports.get(port_name)}"
            )
    if int(env.get("CREDITGATE_WORKERS", "0")) == 0:
        yield f"{ref(dep)}: CREDITGATE_WORKERS=0 counts the node's CPUs, not the pod's; set it"
    store = env.get("CREDITGATE_STORE_URL", secret_env.get("CREDITGATE_STORE_URL", ""))
    if store.startswith("sqlite"):
        replicas = dep["spec"].get("replicas")
        if replicas != 1 or r.by_kind("HorizontalPodAutoscaler"):
            yield f"{ref(dep)}: an SQLite store needs exactly one replica and no autoscaler"
