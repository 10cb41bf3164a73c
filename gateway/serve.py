"""``creditgate serve``: N traffic workers sharing one port, the admin port in the parent.

Each worker process binds the traffic port itself with ``SO_REUSEPORT`` (the kernel
spreads connections across them) and runs the traffic application on uvloop. The parent
serves the admin port (probes, metrics of all processes, admin API) and runs the flusher.
Prometheus values of every process meet in ``PROMETHEUS_MULTIPROC_DIR``, which the
parent sets (to a temporary directory it removes at exit) before anything imports
``prometheus_client``.

Before any worker starts, the parent binds the admin port, checks that the traffic port
is free (a port held by another program fails at once, with one line naming the
setting), and brings the store to the code's schema (:mod:`gateway.startup`); a worker
that cannot bind or start reports it at once and the gateway stops with that reason.

SIGTERM or SIGINT: the parent forwards SIGTERM to the workers, which stop accepting,
finish in-flight requests within ``shutdown_grace_s`` and exit; then the parent closes
the admin port and exits 0. A worker that dies on its own is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from config import Settings, SettingsError
from config.loading import env_name
from gateway.logs import setup_logging
from gateway.startup import StartupError
from gateway.worker import cannot_listen, worker_main

log = logging.getLogger(__name__)
_ctx = mp.get_context("spawn")


def serve(settings: Settings, banner: Callable[[Settings], str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; returns the exit code. ``banner`` (given the
    settings with the ports in use) is printed once the gateway serves."""
    setup_logging(settings)
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="creditgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    reserve = admin = None
    try:
        admin = _listen(settings, "admin_port")
        # The port in use (picked by the system if 0): the egress policy refuses it.
        settings = settings.model_copy(update={"admin_port": admin.getsockname()[1]})
        if settings.traffic_port:
            _probe(settings)
        _state_dir(settings)
        # Every worker must bind the same port: hold it meanwhile (and pick it if 0).
        reserve = _bind(settings, "traffic_port", reuse_port=True)
        settings = settings.model_copy(update={"traffic_port": reserve.getsockname()[1]})
        import uvloop

        return uvloop.run(_parent(settings, settings.metering, reserve, admin, banner))
    finally:
        for sock in (reserve, admin):
            if sock is not None:
                sock.close()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _bind(settings: Settings, port_setting: str, *, reuse_port: bool = False) -> socket.socket:
    host, port = settings.host, getattr(settings, port_setting)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cannot_listen(settings, port_setting, exc) from None
    return sock


def _listen(settings: Settings, port_setting: str) -> socket.socket:
    sock = _bind(settings, port_setting)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def check_ports(settings: Settings, hint: str = "") -> None:
    """:class:`StartupError` now unless both ports are free (``hint`` ends the message)."""
    try:
        for name in ("admin_port", "traffic_port"):
            if getattr(settings, name):
                _bind(settings, name).close()
    except StartupError as exc:
        raise StartupError(f"{exc}{hint}") from None


def _state_dir(settings: Settings) -> None:
    """Create ``state_dir`` (it holds crash journals) or say in one line why not."""
    path = Path(settings.state_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"{env_name('state_dir')}: cannot write {path}: {exc.strerror or exc}"
        ) from None


def _probe(settings: Settings) -> None:
    """Fail unless the traffic port is free. Without ``SO_REUSEPORT`` the bind fails
    against any listener, a running creditgate's workers included, which would otherwise
    share the port with ours."""
    _bind(settings, "traffic_port").close()


class _Workers:
    def __init__(self, settings: Settings, metering: bool) -> None:
        self.settings = settings
        self.metering = metering
        self.count = settings.workers or os.cpu_count() or 1
        self.ready: Any = _ctx.Queue()
        self.procs: list[BaseProcess] = []
        self.stopping = False

    def spawn(self) -> BaseProcess:
        proc = _ctx.Process(
            target=worker_main,
            args=(self.settings, self.ready, self.metering),
            name="creditgate-worker",
            daemon=False,
        )
        proc.start()
        self.procs.append(proc)
        return proc

    async def wait_ready(self, n: int, deadline_s: float = 120.0) -> None:
        """Until ``n`` workers listen; a worker's failure (reported, or its exit) stops
        the wait at once with :class:`StartupError`."""
        import queue

        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        ready = 0
        while ready < n:
            try:
                kind, detail = await loop.run_in_executor(None, self.ready.get, True, 0.2)
            except queue.Empty:
                dead = [p for p in self.procs if p.exitcode is not None]
                if dead:
                    raise StartupError(
                        f"a traffic worker exited with {dead[0].exitcode} while starting"
                    ) from None
                if loop.time() > deadline:
                    raise StartupError(
                        f"traffic workers did not start within {deadline_s:.0f}s"
                    ) from None
                continue
            if kind == "error":
                raise StartupError(str(detail))
            ready += 1

    async def supervise(self) -> None:
        """Replace a worker that exits while the gateway is not stopping."""
        from prometheus_client import multiprocess

        while not self.stopping:
            await asyncio.sleep(0.5)
            for proc in list(self.procs):
                if proc.is_alive() or self.stopping:
                    continue
                log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                self.procs.remove(proc)
                if proc.pid is not None:
                    multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
                self.spawn()

    async def stop(self) -> None:
        from prometheus_client import multiprocess

        self.stopping = True
        for proc in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = self.settings.shutdown_grace_s + 10
        for proc in self.procs:
            await loop.run_in_executor(None, proc.join, deadline)
            if proc.is_alive():
                log.error("worker %s did not stop in time: killing it", proc.pid)
                proc.kill()
                await loop.run_in_executor(None, proc.join, 5)
            if proc.pid is not None:
                multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]


async def _parent(
    settings: Settings,
    metering: bool,
    reserve: socket.socket,
    admin: socket.socket,
    banner: Callable[[Settings], str] | None = None,
) -> int:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.http_server import GatewayRunner
    from gateway.startup import prepare_store, warn_if_redis_down

    await prepare_store(settings)
    try:
        await check_channel_key(settings)
    except SettingsError as exc:
        print(f"creditgate: {exc}", file=sys.stderr, flush=True)
        return 2
    await warn_if_redis_down(settings)
    workers = _Workers(settings, metering)
    try:
        for _ in range(workers.count):
            workers.spawn()
        await workers.wait_ready(workers.count)
    except BaseException:
        await workers.stop()
        raise
    reserve.close()
    gw = create_app(settings, run_flusher=True, only="admin")
    runner = GatewayRunner(gw.admin, settings, shutdown_timeout=5.0)
    await runner.setup()
    await web.SockSite(runner, admin).start()
    admin_port = admin.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    supervisor = asyncio.create_task(workers.supervise())
    print(
        f"creditgate: traffic on http://{settings.host}:{settings.traffic_port} "
        f"({workers.count} workers), admin on http://{settings.host}:{admin_port}",
        flush=True,
    )
    if banner is not None:
        print(banner(settings.model_copy(update={"admin_port": admin_port})), flush=True)
    await stop.wait()
    log.info("stopping: finishing in-flight requests (grace %.0fs)", settings.shutdown_grace_s)
    supervisor.cancel()
    await workers.stop()
    await runner.cleanup()
    return 0


async def check_channel_key(settings: Settings) -> None:
    """Refuse to start when stored channel secrets cannot be decrypted (SettingsError);
    a store that does not answer yet is left to ``/readyz``."""
    from meter.accounts.channel_secrets import check_key
    from meter.store import open_store

    try:
        async with asyncio.timeout(10), open_store(settings.store_url) as store:
            await check_key(store, settings)
    except SettingsError:
        raise
    except Exception as exc:
        log.warning("channel secrets not checked: the store did not answer (%r)", exc)
