"""A traffic worker process of ``creditgate serve`` (:mod:`gateway.serve`): binds the
traffic port with ``SO_REUSEPORT``, serves it with the configured traffic server
(:mod:`gateway.traffic_site`) on uvloop, and drains on SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any

from config import Settings
from config.loading import env_name
from gateway.logs import setup_logging
from gateway.startup import StartupError

log = logging.getLogger(__name__)


def cannot_listen(settings: Settings, port_setting: str, exc: OSError) -> StartupError:
    port = getattr(settings, port_setting)
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{env_name('host')}: cannot listen on {settings.host!r}: {exc}")
    if exc.errno == errno.EADDRINUSE:
        reason = "the port is in use (another program, or another creditgate, holds it)"
    else:
        reason = exc.strerror or str(exc)
    return StartupError(
        f"{env_name(port_setting)}: cannot listen on {settings.host}:{port}: {reason}"
    )


class _CannotListen(Exception):
    """A worker could not bind the traffic port."""


def raise_open_files() -> int:
    """Raise this process's soft limit of open files to its hard limit, and return it:
    each message in flight may hold two descriptors (its client's and its bot's), and a
    soft limit of 1024 (a common default) would stop a worker serving long before its
    connection caps do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open files limit: %s", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:  # an infinite hard limit the kernel caps
        log.warning("open files limit stays %s (hard %s): %s", soft, hard, exc)
        return soft
    log.info("open files limit raised from %s to %s", soft, hard)
    return hard


def worker_main(settings: Settings, ready: Any, metering: bool) -> None:
    """Entry point of a worker process."""
    import uvloop

    setup_logging(settings)
    raise_open_files()
    started: list[bool] = []
    try:
        uvloop.run(_worker(settings, ready, metering, started))
    except _CannotListen as exc:  # the parent says why and stops
        ready.put(("error", str(exc)))
        sys.exit(1)
    except Exception as exc:
        if started:  # a crash while serving: the parent replaces this worker
            log.exception("worker failed")
        else:  # failed to start: the parent stops with one line; the traceback at DEBUG
            log.debug("worker failed to start", exc_info=True)
            ready.put(("error", f"a traffic worker failed to start: {type(exc).__name__}: {exc}"))
        sys.exit(1)


async def _worker(
    settings: Settings, ready: Any, metering: bool, started: list[bool] | None = None
) -> None:
    from gateway.app import create_app
    from gateway.traffic_site import TrafficPort
    from gateway.traffic_stats import time_gc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gw = create_app(settings, metering=metering, only="traffic")
    port = TrafficPort(gw.traffic, settings, shutdown_timeout=settings.shutdown_grace_s)
    await port.setup()
    try:
        await port.listen(settings.host, settings.traffic_port, reuse_port=True)
    except OSError as exc:
        raise _CannotListen(str(cannot_listen(settings, "traffic_port", exc))) from None
    if settings.gc_freeze:
        # Everything allocated by start-up lives as long as the worker: out of the
        # collector's way, so collections walk only what requests allocate.
        gc.collect()
        gc.freeze()
    gc.set_threshold(settings.gc_threshold, 20, 20)
    time_gc(gw.metrics.gc_seconds.inc)  # creditgate_gc_seconds_total: the GC's cost
    ready.put(("ready", os.getpid()))
    if started is not None:
        started.append(True)
    watch = asyncio.create_task(_orphan_watch(stop))
    await stop.wait()
    watch.cancel()
    # Stops accepting, lets in-flight requests finish (up to the grace), then cleans up.
    await port.cleanup()


async def _orphan_watch(stop: asyncio.Event) -> None:
    """Stop gracefully when the parent is gone (killed): never serve as an orphan."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            break
    log.error("parent process %s is gone: stopping", parent)
    stop.set()
