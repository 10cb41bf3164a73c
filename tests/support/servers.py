"""Start real Redis / Redis Cluster / PostgreSQL servers on free loopback ports.

Plain helpers (no pytest dependency) shared by ``tests/conftest.py`` and the bench
scripts.  Every server listens on 127.0.0.1 only, keeps its files in the given work
directory, and is stopped by ``stop()``; an ``atexit`` hook kills whatever is still
running when the interpreter exits.

Example (outside pytest)::

    with start_redis(Path(tmp)) as redis, start_postgres(Path(tmp) / "pg") as pg:
        print(redis.url, pg.dsn)
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

__all__ = [
    "HOST",
    "PostgresServer",
    "RedisCluster",
    "RedisReplyError",
    "RedisServer",
    "ServerError",
    "find_pg_bin",
    "free_port",
    "redis_command",
    "start_postgres",
    "start_redis",
    "start_redis_cluster",
]

HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384


class ServerError(RuntimeError):
    """A server could not be started, or did not reach the expected state in time."""


class RedisReplyError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------- cleanup


class _Cleanable(Protocol):
    def _emergency_stop(self) -> None: ...


_LIVE: list[_Cleanable] = []


def _register(obj: _Cleanable) -> None:
    if obj not in _LIVE:
        _LIVE.append(obj)


@atexit.register
def _cleanup_all() -> None:
    for obj in reversed(_LIVE):
        with contextlib.suppress(Exception):
            obj._emergency_stop()
    _LIVE.clear()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", "replace")


# ----------------------------------------------------------- tiny RESP client


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: Any) -> Any:
    line: bytes = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data: bytes = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected RESP reply: {line!r}")


def redis_command(
    port: int, *args: str | bytes | int, host: str = HOST, timeout: float = 2.0
) -> Any:
    """Send one command over a fresh connection and return the decoded reply.

    Synchronous and dependency-free (no event loop), for setup/teardown code.
    Raises ``OSError`` when nothing listens and ``RedisReplyError`` on ``-ERR``.
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_encode(args))
        with s.makefile("rb") as f:
            return _read_reply(f)


def _info_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------- Redis


@dataclass(eq=False)
class RedisServer:
    """One ``redis-server`` child process (not daemonized) bound to 127.0.0.1."""

    port: int
    workdir: Path
    extra_args: list[str] = field(default_factory=list)
    host: str = HOST
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, *args: str | bytes | int) -> Any:
        """Run one command on this server (see :func:`redis_command`)."""
        return redis_command(self.port, *args, host=self.host)

    def ping(self) -> bool:
        try:
            return bool(self.command("PING") == "PONG")
        except (OSError, RedisReplyError):
            return False

    def start(self, *, wait: bool = True, timeout: float = 10.0) -> Self:
        """(Re)start on the same port and directory; no-op if already running."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        _register(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until PING answers; raise ServerError (and stop) if it never does."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                self.proc = None
                raise ServerError(
                    f"redis-server on port {self.port} exited:\n{_tail(self.log_file)}"
                )
            if self.ping():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"redis-server on port {self.port} not answering PING after "
                    f"{timeout}s:\n{_tail(self.log_file)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def kill(self) -> None:
        """SIGKILL (simulates a crash); ``start()`` brings it back on the same port."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _emergency_stop(self) -> None:
        self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(
    workdir: Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    timeout: float = 10.0,
) -> RedisServer:
    """Start a standalone redis-server on ``port`` (a free one if None) and wait for PING."""
    attempts = 1 if port is not None else 3
    last: ServerError | None = None
    for _ in range(attempts):
        server = RedisServer(
            port=port if port is not None else free_port(),
            workdir=Path(workdir),
            extra_args=list(extra_args),
        )
        try:
            return server.start(timeout=timeout)
        except ServerError as exc:  # port grabbed meanwhile? try another one
            last = exc
    assert last is not None
    raise last


# --------------------------------------------------------------- Redis Cluster


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
class RedisCluster:
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
                info = _info_fields(str(n.command("CLUSTER", "INFO")))
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
                repl = _info_fields(str(n.command("INFO", "replication")))
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return f"{n.port}: replica link {repl.get('master_link_status')}"
            except (OSError, RedisReplyError) as exc:
                return f"{n.port}: {exc!r}"
        return ""

    def wait_ok(self, timeout: float = 15.0) -> None:
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

    def wait_failover(self, port_killed: int, timeout: float = 30.0) -> int:
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

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def _emergency_stop(self) -> None:
        for n in self.nodes:
            n.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis_cluster(
    workdir: Path,
    masters: int = 3,
    replicas_per_master: int = 0,
    *,
    timeout: float = 30.0,
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
    _register(cluster)
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
                raise ServerError(f"could not start cluster nodes:\n{_tail(node.log_file)}")
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


# ------------------------------------------------------------------ PostgreSQL


def find_pg_bin() -> Path:
    """Directory of the newest PostgreSQL server binaries (/usr/lib/postgresql/N/bin)."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(x) for x in re.findall(r"\d+", name))

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if not found:
        raise ServerError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; "
            "run `make test` (scripts/install-deps.sh installs them)"
        )
    return Path(found[-1]).parent


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Can ``user`` reach (search) ``path`` and every directory above it?"""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for p in [path, *path.parents]:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True


_SAFE_DBNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(eq=False)
class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) listening on 127.0.0.1.

    ``dir`` holds the data directory, the log and the unix socket.  As root, the
    server runs as the ``postgres`` user (initdb refuses root); when that user cannot
    reach the requested directory (pytest's tmp dirs are 0700) or the socket path
    would be too long, ``dir`` is a private directory under /tmp instead, removed
    by ``cleanup()``.
    """

    port: int
    dir: Path
    bin_dir: Path
    run_as_postgres: bool
    owns_dir: bool = False
    host: str = HOST

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "log"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self.run_as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
        )

    def _pg(self, tool: str) -> str:
        return str(self.bin_dir / tool)

    def initdb(self) -> None:
        res = self._run(
            self._pg("initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--no-locale",
        )  # fmt: skip
        if res.returncode != 0:
            raise ServerError(f"initdb failed:\n{res.stdout}\n{res.stderr}")

    @property
    def pid(self) -> int | None:
        """PID of the postmaster if it is running, else None."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 30.0) -> Self:
        """Start (again) on the same data directory and port; no-op if running."""
        if self.running:
            return self
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        res = self._run(
            self._pg("pg_ctl"),
            "-D", str(self.data_dir),
            "-w", "-t", str(int(timeout)),
            "-o", opts,
            "-l", str(self.log_file),
            "start",
            timeout=timeout + 10,
        )  # fmt: skip
        _register(self)
        if res.returncode != 0:
            raise ServerError(
                f"pg_ctl start failed (port {self.port}):\n{res.stdout}\n{res.stderr}\n"
                f"{_tail(self.log_file)}"
            )
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (or smart/immediate); no-op if not running."""
        if not self.running:
            return
        res = self._run(self._pg("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop")
        if res.returncode != 0 and self.running:
            self._kill()

    def _kill(self) -> None:
        pid = self.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop, and remove the directory if this object created it under /tmp."""
        self.stop()
        if self.owns_dir:
            shutil.rmtree(self.dir.parent, ignore_errors=True)

    def _emergency_stop(self) -> None:
        if self.running:
            self.stop("immediate")
        if self.owns_dir:
            shutil.rmtree(self.dir.parent, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql (as client, over TCP); return its output."""
        argv = [
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", "postgres",
            "-d", database, "-c", sql,
        ]  # fmt: skip
        res = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )
        if res.returncode != 0:
            raise ServerError(f"psql failed: {sql!r}\n{res.stderr}")
        return res.stdout

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` and return its DSN."""
        if not _SAFE_DBNAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` (disconnecting its sessions)."""
        if not _SAFE_DBNAME.match(name):
            raise ValueError(f"unsafe database name: {name!r}")
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def start_postgres(workdir: Path, port: int | None = None) -> PostgresServer:
    """initdb a fresh cluster in ``workdir`` and start it on ``port`` (free one if None)."""
    bin_dir = find_pg_bin()
    as_root = os.geteuid() == 0
    pg_dir = Path(workdir).absolute()
    owns_dir = False
    socket_too_long = len(str(pg_dir)) + len("/.s.PGSQL.65535.lock") > 100
    if as_root:
        user = pwd.getpwnam("postgres")
        if socket_too_long or not _traversable_by(pg_dir.parent, user):
            base = Path(tempfile.mkdtemp(prefix="creditgate-pg-"))
            base.chmod(0o711)
            pg_dir, owns_dir = base / "pg", True
        subprocess.run(
            ["install", "-d", "-o", "postgres", "-g", "postgres", str(pg_dir)], check=True
        )
    else:
        if socket_too_long:
            pg_dir, owns_dir = Path(tempfile.mkdtemp(prefix="creditgate-pg-")) / "pg", True
        pg_dir.mkdir(parents=True, exist_ok=True)

    server = PostgresServer(
        port=port if port is not None else free_port(),
        dir=pg_dir,
        bin_dir=bin_dir,
        run_as_postgres=as_root,
        owns_dir=owns_dir,
    )
    _register(server)
    try:
        server.initdb()
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            try:
                server.start()
                break
            except ServerError:
                if attempt == attempts - 1:
                    raise
                server.port = free_port()  # port taken meanwhile: try another one
    except BaseException:
        server._emergency_stop()
        raise
    return server
