"""A real Prometheus server scrapes a running ``creditgate serve``; a PromQL query over its
HTTP API returns exactly the request counter the gateway was driven to."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.redis_layer.client import RedisClient
from tests.support.bot import (  # noqa: F401
    Bot,
    bot_fixture,
    make_settings,
    rclient_fixture,
    seed,
)
from tests.support.servers import free_port
from tests.support.serving import creditgate_serve, stop, tail

WS = "promtest"
APP = f"{WS}_app1"
N = 23  # requests sent through the gateway
QUERY = 'sum(creditgate_requests_total{outcome="admitted"})'
WAIT_S = 60.0


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
            await stop(proc, 15)


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
    async with creditgate_serve(redis_url, tmp_path, shutdown_grace_s=5) as served:
        traffic, admin_port = served.traffic, int(served.admin.rsplit(":", 1)[1])
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
                f"{tail(tmp_path / 'prometheus.log')}"
            )
            # The target was really scraped (not a stale or synthetic series).
            up = await _query(http, prom, 'up{job="creditgate"}')
            assert up, up
            assert float(up[0]["value"][1]) == 1.0, up
            labelled = await _query(
                http, prom, 'creditgate_requests_total{channel="web",outcome="admitted"}'
            )
            assert labelled, labelled
            assert float(labelled[0]["value"][1]) == N, labelled
