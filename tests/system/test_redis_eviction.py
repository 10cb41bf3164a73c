"""A Redis that may evict keys (``maxmemory`` with a policy other than ``noeviction``) is
refused: at start-up with one line naming the policy and the fix (exit 2), and on
``/readyz``. A real redis-server started with such a policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meter.redis_layer.client import connect
from meter.redis_layer.eviction import eviction_problem
from tests.support.adminkit import admin_server, admin_settings
from tests.support.servers import RedisCluster, RedisServer, start_redis
from tests.system.test_newcomer import one_line, run, serve

LIMIT = ["--maxmemory", "64mb"]
LRU = ["--maxmemory-policy", "allkeys-lru"]


@pytest.fixture
def lru_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(
        tmp_path / "redis", extra_args=[*LIMIT, "--maxmemory-policy", "allkeys-lru"]
    )
    yield server
    server.stop()


def test_serve_refuses_a_redis_that_evicts(tmp_path: Path, lru_redis: RedisServer) -> None:
    proc = serve(tmp_path, redis_url=lru_redis.url, workers=1)
    line = one_line(proc, 2, "CREDITGATE_REDIS_URL", "allkeys-lru", "noeviction")
    assert "maxmemory" in line


def test_reconcile_refuses_a_redis_that_evicts(tmp_path: Path, lru_redis: RedisServer) -> None:
    assert run("migrate", cwd=tmp_path).returncode == 0
    proc = run("reconcile", cwd=tmp_path, redis_url=lru_redis.url)
    one_line(proc, 2, "CREDITGATE_REDIS_URL", "allkeys-lru", "noeviction")


@pytest.mark.parametrize("policy", ["noeviction", None])
def test_noeviction_or_no_limit_is_fine(tmp_path: Path, policy: str | None) -> None:
    args = (
        [*LIMIT, "--maxmemory-policy", policy] if policy else ["--maxmemory-policy", "allkeys-lru"]
    )
    server = start_redis(tmp_path / "redis", extra_args=args)
    try:
        assert run("migrate", cwd=tmp_path).returncode == 0
        proc = run("reconcile", cwd=tmp_path, redis_url=server.url)
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop()


async def test_readyz_reports_a_redis_that_evicts(tmp_path: Path, lru_redis: RedisServer) -> None:
    """Redis may have been down at start-up (serve starts anyway) and come up evicting."""
    async with admin_server(admin_settings(lru_redis.url, tmp_path)) as admin:
        resp = await admin.client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503, body
        assert "allkeys-lru" in body["checks"]["redis"]
        lru_redis.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        resp = await admin.client.get("/readyz")
        assert resp.status == 200, await resp.text()


async def test_every_master_of_a_cluster_is_checked(redis_cluster: RedisCluster) -> None:
    client = connect(redis_cluster.url)
    last = redis_cluster.nodes[-1]  # no replicas: every node is a master
    try:
        assert await eviction_problem(client) is None
        last.command("CONFIG", "SET", "maxmemory", "64mb")
        last.command("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
        assert (
            await eviction_problem(client)
            == "maxmemory-policy volatile-lru with maxmemory 67108864"
        )
    finally:
        last.command("CONFIG", "SET", "maxmemory", "0")
        last.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        await client.aclose()
