"""``/readyz`` answers ready while the admin's Redis pool and store are held busy: its
probes have connections of their own (gateway/health.py), so a flusher or admin queries
holding every pooled connection never fail a probe (and Kubernetes never takes a healthy
pod out of its Service for it), and overlapping probes share one check. Real Redis (and
a real Redis Cluster), real SQLite and PostgreSQL, real sockets."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from tests.support.adminkit import Admin
from tests.support.bot import running_gateway
from tests.support.servers.cluster import RedisCluster
from tests.support.settings import make_settings

# Connections that exhaust the admin store: SQLite has one (behind a lock); PostgreSQL a
# pool of open_store's default max_size.
STORE_CONNECTIONS = {"sqlite": 1, "postgresql": 10}


async def test_readyz_answers_while_the_shared_pools_are_held(any_admin: Admin) -> None:
    admin = any_admin
    assert isinstance(admin.redis, Redis)
    pool = admin.redis.connection_pool
    held = [await pool.get_connection() for _ in range(pool.max_connections)]
    try:
        async with AsyncExitStack() as stack:
            for _ in range(STORE_CONNECTIONS[admin.store.dialect]):
                await stack.enter_async_context(admin.store.connection())
            resp = await admin.client.get("/readyz")
            body = await resp.json()
        assert resp.status == 200, body
        assert body["status"] == "ready", body
        assert body["checks"] == {"redis": "ok", "store": "ok"}, body
    finally:
        for conn in held:
            await pool.release(conn)
    # The pools work again once released: what was held was theirs.
    assert await admin.redis.ping()
    assert await admin.store.ping()


async def test_the_probes_connection_closes_with_the_app(any_admin: Admin) -> None:
    """Opened by the first probe, closed at shutdown: Redis counts one client fewer."""
    resp = await any_admin.client.get("/readyz")
    assert resp.status == 200, await resp.text()
    before = await _clients(any_admin)
    await any_admin.client.close()  # the admin application's cleanup
    for _ in range(600):  # Redis sees the close when it reads it: wait for that
        if await _clients(any_admin) < before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {before} Redis clients after the admin closed")


async def _clients(admin: Admin) -> int:
    return int((await admin.redis.info("clients"))["connected_clients"])


async def test_overlapping_probes_share_one_check_on_a_cluster(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    """A cluster client refuses a command past its connection bound (MaxConnectionsError)
    instead of waiting: probes that overlap (kubelet, an operator's loop, a blackbox
    prober) share one check, so none is refused for the others'."""
    settings = make_settings(redis_cluster.url, tmp_path, redis_timeout_s=30.0, fail_mode="closed")
    async with (
        running_gateway(settings) as gw,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
    ):

        async def probe() -> tuple[int, str]:
            async with http.get(gw.admin_url + "/readyz") as resp:
                return resp.status, await resp.text()

        for n in (1, 3, 20):
            got = await asyncio.gather(*(probe() for _ in range(n)))
            assert [s for s, _ in got] == [200] * n, got
