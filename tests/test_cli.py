"""``creditgate`` as a process: serve with 2 workers, metrics across them, SIGTERM under
load, settings errors, and the subcommands other parts carry out."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from bot import (  # noqa: F401
    Bot,
    bot_fixture,
    http_fixture,
    make_settings,
    rclient_fixture,
    seed,
)
from servers import free_port

from meter.redis_client import RedisClient
from meter.store import open_store

WS = "clitest"
APP = f"{WS}_app1"
CREDITGATE = str(Path(sys.executable).parent / "creditgate")


def _env(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({f"CREDITGATE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Served:
    def __init__(
        self, proc: asyncio.subprocess.Process, traffic: str, admin: str, store_url: str
    ) -> None:
        self.proc = proc
        self.traffic = traffic
        self.admin = admin
        self.store_url = store_url


@pytest.fixture
async def served(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Served]:
    settings = make_settings(redis_url, tmp_path)
    await seed(
        rclient,
        settings,
        WS,
        {APP: {"product": "contact_center", "upstream_url": bot.url}},
        pool=100_000_000,
    )
    traffic, admin = free_port(), free_port()
    env = _env(
        redis_url=redis_url,
        store_url=settings.store_url,
        host="127.0.0.1",
        traffic_port=traffic,
        admin_port=admin,
        workers=2,
        shutdown_grace_s=15,
        log_format="text",
        flush_bucket_s=1,
        flush_grace_s=0.2,
        flush_interval_s=0.2,
    )
    store = open_store(settings.store_url)
    await store.migrate()
    await store.close()
    log = (tmp_path / "serve.log").open("wb")  # a pipe nobody reads would fill up
    proc = await asyncio.create_subprocess_exec(
        CREDITGATE, "serve", env=env, stdout=subprocess.PIPE, stderr=log
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"creditgate: traffic on" in line, line
        yield Served(
            proc, f"http://127.0.0.1:{traffic}", f"http://127.0.0.1:{admin}", settings.store_url
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()


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
    async with http.get(f"{served.admin}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert 'creditgate_requests_total{channel="other",outcome="admitted"} 20.0' in text
    # Every admission went through some admit.lua call: the batch sizes add up to 20.
    assert "creditgate_admission_batch_size_sum 20.0" in text
    async with http.get(f"{served.admin}/readyz") as resp:
        assert resp.status == 200
    # The parent's flusher moves the 20 units into the store and says so in /metrics.
    for _ in range(200):
        async with http.get(f"{served.admin}/metrics") as resp:
            text = await resp.text()
        if 'creditgate_flushed_rows_total{kind="usage"}' in text:
            break
        await asyncio.sleep(0.05)
    assert 'creditgate_flushed_rows_total{kind="usage"}' in text
    assert "creditgate_flush_lag_seconds" in text
    store = open_store(served.store_url)
    try:
        assert (await store.usage_totals(WS)).units.get("request") == 20
    finally:
        await store.close()
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
        for _ in range(400):  # every request reached the bot: all are in flight
            if bot.count("/slow") == n:
                break
            await asyncio.sleep(0.025)
        assert bot.count("/slow") == n
        served.proc.send_signal(signal.SIGTERM)
        statuses = await asyncio.gather(*tasks, return_exceptions=True)
    assert statuses == [200] * n
    assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await _send(http, url, "late")


def _run(*args: str, **env: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CREDITGATE, *args], env=_env(**env), capture_output=True, text=True, timeout=60
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
        ("flush", ["--once", "--force", "--lease"]),
        ("export", ["--from", "--to", "--workspace", "--granularity", "--format", "--sessions"]),
        ("reconcile", ["--workspace", "--apply"]),
    ],
)
def test_delegated_subcommands_take_their_flags(name: str, flags: list[str]) -> None:
    res = _run(name, "--help")
    assert res.returncode == 0
    for flag in flags:
        assert flag in res.stdout
