"""``creditgate serve`` as a real subprocess, for tests that need the whole process model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from meter.store import open_store
from tests.support.servers import free_port
from tests.support.settings import (
    LOOPBACK,
    REDIS_TIMEOUT_S,
    TRAFFIC_SERVER_ENV,
    connect_bound,
    make_settings,
)

CREDITGATE = str(Path(sys.executable).parent / "creditgate")


def creditgate_env(**settings: object) -> dict[str, str]:
    """This environment without CREDITGATE_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    if TRAFFIC_SERVER_ENV in os.environ:  # the suite's choice of traffic server
        env[TRAFFIC_SERVER_ENV] = os.environ[TRAFFIC_SERVER_ENV]
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({f"CREDITGATE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def tail(path: Path, limit: int = 3000) -> str:
    """The end of a log file, for assertion messages."""
    try:
        return path.read_bytes()[-limit:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


async def stop(proc: asyncio.subprocess.Process, grace_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``grace_s``."""
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@dataclass
class Served:
    proc: asyncio.subprocess.Process
    traffic: str
    admin: str
    store_url: str


@contextlib.asynccontextmanager
async def creditgate_serve(
    redis_url: str, tmp_path: Path, **settings: object
) -> AsyncIterator[Served]:
    """``creditgate serve`` (2 workers, loopback, a migrated SQLite store, the Redis and
    bot connect timeouts of :func:`make_settings` with ``tmp_path``) until the block ends;
    ``settings`` win."""
    store_url = make_settings(redis_url, tmp_path).store_url
    store = open_store(store_url)
    await store.migrate()
    await store.close()
    traffic, admin = free_port(), free_port()
    env = creditgate_env(
        redis_url=redis_url,
        store_url=store_url,
        host="127.0.0.1",
        traffic_port=traffic,
        admin_port=admin,
        **{
            "workers": 2,
            "log_format": "text",
            "egress_allow": ",".join(LOOPBACK),
            "state_dir": tmp_path / "state",
            # Dozens of messages at once on a busy 2-core machine: at the 0.5 s default a
            # Redis reply may come too late and a message be refused 503 for the machine's
            # speed. Tests of Redis timeouts set their own.
            "redis_timeout_s": REDIS_TIMEOUT_S,
            # The connect to a loopback bot, a hang bound as in-process (it had the 2 s
            # default). Tests of the connect timeout set their own.
            "upstream_connect_timeout_s": connect_bound(settings),
            **settings,
        },
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:  # a pipe nobody reads would fill up
        proc = await asyncio.create_subprocess_exec(
            CREDITGATE, "serve", env=env, stdout=subprocess.PIPE, stderr=log
        )
        assert proc.stdout is not None
        try:
            # A bound for a hang only: on a busy machine start-up alone took over 60 s.
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            assert b"creditgate: traffic on" in line, (line, tail(log_path))
            yield Served(
                proc, f"http://127.0.0.1:{traffic}", f"http://127.0.0.1:{admin}", store_url
            )
        finally:
            await stop(proc)


@contextlib.asynccontextmanager
async def seeded_serve(
    rclient: RedisClient,
    redis_url: str,
    tmp_path: Path,
    ws: str,
    apps: Mapping[str, Mapping[str, Any]],
    *,
    pool: int = 0,
    **settings: object,
) -> AsyncIterator[Served]:
    """:func:`creditgate_serve` in front of workspace ``ws`` seeded with ``apps`` and
    ``pool`` funds (meter.accounts.seeding.seed)."""
    await seed(rclient, make_settings(redis_url, tmp_path), ws, apps, pool=pool)
    async with creditgate_serve(redis_url, tmp_path, **settings) as served:
        yield served
