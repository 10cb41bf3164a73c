"""A Redis Cluster of real ``redis-server`` processes on loopback, with failover and
resharding helpers."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers.process import HOST, ServerError, Stoppable, free_port, register, tail
from tests.support.servers.redis_server import READY_BOUND_S, RedisServer
from tests.support.servers.resp import RedisReplyError, info_fields, redis_command

CLUSTER_SLOTS = 16384


def _parse_cluster_nodes(reply: Any) -> list[list[str]]:
    return [line.split() for line in str(reply).splitlines() if line.strip()]


def _healthy_ports(view: list[list[str]], flag: str) -> list[int]:
    """Ports of the nodes in a CLUSTER NODES view that have ``flag`` and are not failing."""
    bad = {"fail", "fail?", "handshake", "noaddr"}
    ports = []
    for parts in view:
        flags = set(parts[2].split(","))
        if flag in flags and not flags & bad:
            ports.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
    return sorted(ports)


def _slot_map(port: int) -> list[tuple[int, int, int]]:
    """CLUSTER SLOTS as seen by ``port``: (first slot, last slot, master port)."""
    reply = redis_command(port, "CLUSTER", "SLOTS")
    return [(int(r[0]), int(r[1]), int(r[2][1])) for r in reply]


@dataclass(eq=False)
class RedisCluster(Stoppable):
    """A Redis Cluster of real ``redis-server`` processes on 127.0.0.1."""

    workdir: Path
    nodes: list[RedisServer]
    replicas_per_master: int = 0
    masters: int = 3
    host: str = HOST
    _killed_slots: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"redis+cluster://{self.host}:{self.nodes[0].port}"

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(n.host, n.port) for n in self.nodes]

    def node(self, port: int) -> RedisServer:
        for n in self.nodes:
            if n.port == port:
                return n
        raise KeyError(f"no cluster node on port {port}")

    def _alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.running]

    def _cluster_nodes(self) -> list[list[str]]:
        for n in self._alive():
            try:
                return _parse_cluster_nodes(n.command("CLUSTER", "NODES"))
            except (OSError, RedisReplyError):
                continue
        raise ServerError("no cluster node is answering")

    def _ports_with_flag(self, flag: str) -> list[int]:
        return _healthy_ports(self._cluster_nodes(), flag)

    def master_ports(self) -> list[int]:
        """Ports of the healthy masters, as the cluster currently sees them."""
        return self._ports_with_flag("master")

    def replica_ports(self) -> list[int]:
        """Ports of the healthy replicas, as the cluster currently sees them."""
        return self._ports_with_flag("slave")

    def slot_owner(self, slot: int) -> int:
        """Port of the master serving ``slot`` (per the first live node)."""
        for n in self._alive():
            with contextlib.suppress(OSError, RedisReplyError):
                for first, last, port in _slot_map(n.port):
                    if first <= slot <= last:
                        return port
        raise ServerError(f"slot {slot} is not served")

    def _check_ok(self, nodes: list[RedisServer], forbidden_master: int | None = None) -> str:
        """Return '' when every node in ``nodes`` sees a healthy, fully covered cluster."""
        for n in nodes:
            try:
                info = info_fields(str(n.command("CLUSTER", "INFO")))
                if info.get("cluster_state") != "ok":
                    return f"{n.port}: cluster_state={info.get('cluster_state')}"
                if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
                    return f"{n.port}: cluster_slots_ok={info.get('cluster_slots_ok')}"
                if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                    return f"{n.port}: cluster_known_nodes={info.get('cluster_known_nodes')}"
                slots = _slot_map(n.port)
                covered = sum(
                    last - first + 1 for first, last, master in slots if master != forbidden_master
                )
                if covered != CLUSTER_SLOTS:
                    return f"{n.port}: only {covered} slots served by live masters"
                view = _parse_cluster_nodes(n.command("CLUSTER", "NODES"))
                seen_masters = _healthy_ports(view, "master")
                seen_replicas = _healthy_ports(view, "slave")
                if len(seen_masters) != self.masters or len(seen_replicas) != len(nodes) - (
                    self.masters
                ):
                    return f"{n.port}: sees masters {seen_masters}, replicas {seen_replicas}"
                repl = info_fields(str(n.command("INFO", "replication")))
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return f"{n.port}: replica link {repl.get('master_link_status')}"
            except (OSError, RedisReplyError) as exc:
                return f"{n.port}: {exc!r}"
        return ""

    def wait_ok(self, timeout: float = READY_BOUND_S) -> None:
        """Wait until every running node reports cluster_state:ok with all slots covered."""
        deadline = time.monotonic() + timeout
        while problem := self._check_ok(self._alive()):
            if time.monotonic() > deadline:
                raise ServerError(f"cluster not ok after {timeout}s: {problem}")
            time.sleep(0.05)

    def kill_node(self, port: int) -> None:
        """SIGKILL one node (simulated crash); ``node(port).start()`` restarts it."""
        node = self.node(port)
        with contextlib.suppress(OSError, RedisReplyError, ServerError):
            alive = [n for n in self._alive() if n.port != port] or [node]
            self._killed_slots[port] = [
                (first, last) for first, last, master in _slot_map(alive[0].port) if master == port
            ]
        node.kill()

    def wait_failover(self, port_killed: int, timeout: float = READY_BOUND_S) -> int:
        """Wait until a replica took over ``port_killed``'s slots and the cluster is ok.

        Returns the port of the new master serving the killed master's (first) slot
        range, or of slot 0 when the killed node owned no slots.
        """
        if self.replicas_per_master < 1:
            raise ServerError("cluster has no replicas: a killed master cannot fail over")
        deadline = time.monotonic() + timeout
        survivors = [n for n in self.nodes if n.port != port_killed]
        while problem := self._check_ok(
            [n for n in survivors if n.running], forbidden_master=port_killed
        ):
            if time.monotonic() > deadline:
                raise ServerError(f"no failover of {port_killed} after {timeout}s: {problem}")
            time.sleep(0.05)
        slots = self._killed_slots.get(port_killed) or [(0, 0)]
        return self.slot_owner(slots[0][0])

    def move_keys(
        self, slot: int, src: int, dst: int, keep: Callable[[str], bool] = lambda _: False
    ) -> int:
        """Start moving ``slot`` from master ``src`` to ``dst`` as ``redis-cli --cluster
        reshard`` does (IMPORTING, MIGRATING, then MIGRATE a few keys at a time), leaving
        the keys ``keep`` names behind; returns how many keys moved."""
        s, d = self.node(src), self.node(dst)
        d.command("CLUSTER", "SETSLOT", slot, "IMPORTING", s.command("CLUSTER", "MYID"))
        s.command("CLUSTER", "SETSLOT", slot, "MIGRATING", d.command("CLUSTER", "MYID"))
        moved = 0
        while True:
            found = [k for k in s.command("CLUSTER", "GETKEYSINSLOT", slot, 1000) if not keep(k)]
            if not found:
                return moved
            for i in range(0, len(found), 10):
                s.command("MIGRATE", d.host, d.port, "", 0, 5000, "KEYS", *found[i : i + 10])
            moved += len(found)

    def finish_move(self, slot: int, src: int, dst: int) -> None:
        """Move the rest of ``slot``'s keys and give the slot to ``dst`` on every master."""
        self.move_keys(slot, src, dst)
        dst_id = self.node(dst).command("CLUSTER", "MYID")
        for port in (dst, src, *self.master_ports()):
            self.node(port).command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def _emergency_stop(self) -> None:
        for n in self.nodes:
            n.kill()


def start_redis_cluster(
    workdir: Path,
    masters: int = 3,
    replicas_per_master: int = 0,
    *,
    timeout: float = READY_BOUND_S,
) -> RedisCluster:
    """Start ``masters * (1 + replicas_per_master)`` nodes and join them into a cluster."""
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    nodes: list[RedisServer] = []
    cluster = RedisCluster(
        workdir=workdir, nodes=nodes, replicas_per_master=replicas_per_master, masters=masters
    )
    register(cluster)
    try:
        used: set[int] = set()
        while len(nodes) < masters * (1 + replicas_per_master):
            port = free_port()
            if port in used:
                continue
            used.add(port)
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "2000",
                # replicas must always be willing to fail over, and sync right away
                "--cluster-replica-validity-factor", "0",
                "--repl-diskless-sync-delay", "0",
            ]  # fmt: skip
            node = RedisServer(port=port, workdir=workdir, extra_args=extra)
            with contextlib.suppress(ServerError):  # port taken meanwhile: next one
                nodes.append(node.start())
            if len(used) > 3 * masters * (1 + replicas_per_master):
                raise ServerError(f"could not start cluster nodes:\n{tail(node.log_file)}")
        argv = [
            "redis-cli",
            "--cluster", "create",
            *(f"{n.host}:{n.port}" for n in nodes),
            "--cluster-replicas", str(replicas_per_master),
            "--cluster-yes",
        ]  # fmt: skip
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if res.returncode != 0:
            raise ServerError(f"redis-cli --cluster create failed:\n{res.stdout}\n{res.stderr}")
        cluster.wait_ok(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
