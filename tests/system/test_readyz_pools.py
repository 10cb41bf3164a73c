"""``/readyz`` answers ready while the admin's Redis pool and store are held busy: its
probes have connections of their own (gateway/health.py), so a flusher or admin queries
holding every pooled connection never fail a probe (and Kubernetes never takes a healthy
pod out of its Service for it). Real Redis, real SQLite and PostgreSQL, a real socket."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from redis.asyncio import Redis

from tests.support.adminkit import Admin

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
