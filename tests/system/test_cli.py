"""``creditgate`` as a process: serve with 2 workers, metrics across them, SIGTERM under
load, settings errors, and the subcommands other parts carry out."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meter.redis_layer.client import RedisClient
from meter.store import open_store
from tests.support.bot import Bot
from tests.support.serving import CREDITGATE, Served, creditgate_env, seeded_serve

WS = "clitest"
APP = f"{WS}_app1"


@pytest.fixture
async def served(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Served]:
    apps = {APP: {"product": "contact_center", "upstream_url": bot.url}}
    flush = {"flush_bucket_s": 1, "flush_grace_s": 0.2, "flush_interval_s": 0.2}
    async with seeded_serve(
        rclient, redis_url, tmp_path, WS, apps, pool=100_000_000, shutdown_grace_s=15, **flush
    ) as served:
        yield served


async def _send(http: aiohttp.ClientSession, url: str, user: str) -> int:
    async with http.post(url, headers={"X-Channel-User-Id": user}, data=b"hi") as resp:
        await resp.read()
        return resp.status


async def test_metrics_merge_workers_and_pass_promtool(
    served: Served, bot: Bot, http: aiohttp.ClientSession
) -> None:
    url = f"{served.traffic}/hooks/web/{APP}/quick"
    # Fresh connections each time, so the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        statuses = await asyncio.gather(*(_send(fresh, url, f"u{i}") for i in range(20)))
    assert statuses == [200] * 20
    # Workers write their per-request metrics every METRICS_FLUSH_S: wait for them.
    want = 'creditgate_requests_total{channel="web",outcome="admitted"} 20.0'
    for _ in range(1200):
        async with http.get(f"{served.admin}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        if want in text and "creditgate_admission_batch_size_sum 20.0" in text:
            break
        await asyncio.sleep(0.05)
    assert want in text
    # Every admission went through some admit.lua call: the batch sizes add up to 20.
    assert "creditgate_admission_batch_size_sum 20.0" in text
    async with http.get(f"{served.admin}/readyz") as resp:
        assert resp.status == 200
    # The parent's flusher moves the 20 units into the store and says so in /metrics. A
    # flush may run while the messages are still being admitted: wait for the store to
    # hold all 20, not for the first flush.
    store = open_store(served.store_url)
    try:
        for _ in range(1200):
            if (await store.usage_totals(WS)).units.get("request") == 20:
                break
            await asyncio.sleep(0.05)
        assert (await store.usage_totals(WS)).units.get("request") == 20
    finally:
        await store.close()
    async with http.get(f"{served.admin}/metrics") as resp:
        text = await resp.text()
    assert 'creditgate_flushed_rows_total{kind="usage"}' in text
    assert "creditgate_flush_lag_seconds" in text
    assert "creditgate_clock_offset_seconds" in text  # admissions follow Redis's clock
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: make test installs it (apt prometheus)"
    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await check.communicate(text.encode())
    assert check.returncode == 0, out


async def test_sigterm_under_load_drops_no_in_flight_request(
    served: Served, bot: Bot, http: aiohttp.ClientSession
) -> None:
    n = 40
    url = f"{served.traffic}/hooks/web/{APP}/slow/1.5"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as load:
        tasks = [asyncio.create_task(_send(load, url, f"u{i}")) for i in range(n)]
        for _ in range(1200):  # every request reached the bot: all are in flight
            if bot.count("/slow") == n:
                break
            await asyncio.sleep(0.025)
        assert bot.count("/slow") == n
        served.proc.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*tasks, return_exceptions=True)
    assert statuses == [200] * n
    assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await _send(http, url, "late")


def _run(*args: str, **env: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CREDITGATE, *args], env=creditgate_env(**env), capture_output=True, text=True, timeout=60
    )


def test_invalid_settings_exit_2_with_the_reason() -> None:
    res = _run("serve", workers=-1)
    assert res.returncode == 2
    assert "CREDITGATE_WORKERS" in res.stderr
    res = _run("--config", "/nonexistent/creditgate.yaml", "serve")
    assert res.returncode == 2
    assert "cannot read" in res.stderr


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("migrate", []),
        ("flush", ["--once", "--force", "--lease", "--replay-dead-letters"]),
        ("export", ["--from", "--to", "--workspace", "--granularity", "--format", "--sessions"]),
        ("reconcile", ["--workspace", "--apply"]),
        ("notifications", ["--workspace", "--overdue", "--limit"]),
    ],
)
def test_delegated_subcommands_take_their_flags(name: str, flags: list[str]) -> None:
    res = _run(name, "--help")
    assert res.returncode == 0
    for flag in flags:
        assert flag in res.stdout
