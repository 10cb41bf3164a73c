"""A real Prometheus server scrapes a running ``creditgate serve``; a PromQL query over its
HTTP API returns exactly the request counter the gateway was driven to."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot
from tests.support.servers.prometheus import prometheus_server
from tests.support.serving import seeded_serve, tail

WS = "promtest"
APP = f"{WS}_app1"
N = 23  # requests sent through the gateway
QUERY = 'sum(creditgate_requests_total{outcome="admitted"})'
WAIT_S = 60.0


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
    apps = {APP: {"product": "contact_center", "upstream_url": bot.url}}
    async with seeded_serve(
        rclient, redis_url, tmp_path, WS, apps, pool=100_000_000, shutdown_grace_s=5
    ) as served:
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
