"""A real Prometheus server scrapes a running ``creditgate serve``; a PromQL query over its
HTTP API returns exactly the request counter the gateway was driven to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bot import (  # noqa: F401
    Bot,
    bot_fixture,
    make_settings,
    rclient_fixture,
    seed,
)
from servers import free_port

from meter.redis_client import RedisClient
from meter.store import open_store

WS = "promtest"
APP = f"{WS}_app1"
N = 23  # requests sent through the gateway
CREDITGATE = str(Path(sys.executable).parent / "creditgate")
QUERY = 'sum(creditgate_requests_total{outcome="admitted"})'
WAIT_S = 60.0


def _env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({f"CREDITGATE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_bytes()[-limit:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"


async def _stop(proc: asyncio.subprocess.Process, grace_s: float = 30.0) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def creditgate_serve(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """``creditgate serve`` with 2 workers; yields (traffic URL, admin port)."""
    settings = make_settings(redis_url, tmp_path)
    store = open_store(settings.store_url)
    await store.migrate()
    await store.close()
    traffic, admin = free_port(), free_port()
    env = _env(
        redis_url=redis_url,
        store_url=settings.store_url,
        host="127.0.0.1",
        traffic_port=traffic,
        admin_port=admin,
        workers=2,
        shutdown_grace_s=5,
        log_format="text",
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:  # a pipe nobody reads would fill up
        proc = await asyncio.create_subprocess_exec(
            CREDITGATE, "serve", env=env, stdout=subprocess.PIPE, stderr=log
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert b"creditgate: traffic on" in line, (line, _tail(log_path))
            yield f"http://127.0.0.1:{traffic}", admin
        finally:
            await _stop(proc)


def _prometheus_binary() -> str:
    """The ``prometheus`` server binary; fails (never skips) when it is not installed."""
    binary = shutil.which("prometheus")
    if binary is None and Path("/usr/bin/prometheus").exists():
        binary = "/usr/bin/prometheus"
    if binary is None:
        pytest.fail(
            "prometheus not found on PATH: run `make test` (scripts/install-deps.sh "
            "installs the apt package prometheus)",
            pytrace=False,
        )
    return binary


@contextlib.asynccontextmanager
async def prometheus_server(tmp_path: Path, target: str) -> AsyncIterator[str]:
    """A real ``prometheus`` scraping ``target`` every second; yields its base URL."""
    binary = _prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: creditgate\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    data = tmp_path / "prometheus-data"
    data.mkdir()
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await _stop(proc, 15)


async def _query(http: aiohttp.ClientSession, prom: str, q: str) -> list[dict[str, Any]] | None:
    """The instant-query vector result, or None while Prometheus is not answering yet."""
    try:
        async with http.get(f"{prom}/api/v1/query", params={"query": q}) as resp:
            if resp.status != 200:
                return None
            body = await resp.json()
    except aiohttp.ClientError:
        return None
    assert body["status"] == "success", body
    assert body["data"]["resultType"] == "vector", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_prometheus_scrapes_the_request_counter(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
) -> None:
    settings = make_settings(redis_url, tmp_path)
    await seed(
        rclient,
        settings,
        WS,
        {APP: {"product": "contact_center", "upstream_url": bot.url}},
        pool=100_000_000,
    )
    async with creditgate_serve(redis_url, tmp_path) as (traffic, admin_port):
        url = f"{traffic}/hooks/web/{APP}/msg"
        # Fresh connections, so the kernel spreads them over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:

            async def send(i: int) -> int:
                h = {"X-Channel-User-Id": f"u{i}"}
                async with fresh.post(url, headers=h, data=b"hi") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(send(i) for i in range(N)))
        assert statuses == [200] * N
        assert bot.count("/msg") == N

        async with (
            prometheus_server(tmp_path, f"127.0.0.1:{admin_port}") as prom,
            aiohttp.ClientSession() as http,  # decompresses: Prometheus answers gzip
        ):
            deadline = time.monotonic() + WAIT_S
            value: float | None = None
            result: list[dict[str, Any]] | None = None
            while time.monotonic() < deadline:
                result = await _query(http, prom, QUERY)
                if result:
                    value = float(result[0]["value"][1])
                    if value == N:
                        break
                await asyncio.sleep(0.25)
            assert value == N, (
                f"Prometheus answered {result!r} for {QUERY} after {WAIT_S}s:\n"
                f"{_tail(tmp_path / 'prometheus.log')}"
            )
            # The target was really scraped (not a stale or synthetic series).
            up = await _query(http, prom, 'up{job="creditgate"}')
            assert up and float(up[0]["value"][1]) == 1.0, up
            labelled = await _query(
                http, prom, 'creditgate_requests_total{channel="other",outcome="admitted"}'
            )
            assert labelled and float(labelled[0]["value"][1]) == N, labelled
