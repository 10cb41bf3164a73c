"""The server fixtures start real, working servers."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from tests.support.servers import (
    PostgresServer,
    RedisCluster,
    RedisServer,
    ServerError,
    free_port,
    redis_command,
    start_redis,
    start_redis_cluster,
)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


@pytest.mark.parametrize("worker", ["gw0", "gw1", "gw2"])
def test_free_ports_of_two_workers_never_meet(monkeypatch: pytest.MonkeyPatch, worker: str) -> None:
    """Each worker of ``pytest -n 3`` gets its own share of ports, and no port twice:
    another worker may pick one in the moment before its server binds it."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert {(p >> 1) % 3 for p in ports} == {int(worker[2:])}


def test_a_port_answered_by_another_redis_is_not_taken_for_ours(tmp_path: Path) -> None:
    """The port was free when picked, then another run's redis-server took it first: its
    PING must not pass for our server being ready (ours exits: it could not bind)."""
    theirs = start_redis(tmp_path / "theirs")
    try:
        ours = RedisServer(port=theirs.port, workdir=tmp_path / "ours")
        with pytest.raises(ServerError, match="exited"):
            ours.start()
        assert not ours.running
        assert theirs.running
        assert theirs.ping()
    finally:
        theirs.stop()


async def test_redis_ping_and_flush(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.ping() is True
        assert await client.dbsize() == 0  # FLUSHALLed by the fixture
        await client.set("leftover", "1")
    finally:
        await client.aclose()


def test_redis_url_flushes_between_tests(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_server.command("DBSIZE") == 0


def test_redis_restart_keeps_port(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    try:
        port = server.port
        server.command("SET", "k", "v")
        server.kill()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            redis_command(port, "PING")
        server.start()
        assert server.port == port
        assert server.ping()
        assert server.command("GET", "k") is None  # no persistence: a fresh server
        server.stop()
        assert not server.running
        server.start()
        assert server.ping()
    finally:
        server.stop()


def test_redis_bad_args_raise(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="exited"):
        start_redis(tmp_path, extra_args=["--no-such-option", "x"])


@pytest.mark.cluster
async def test_redis_cluster_set_get(redis_cluster: RedisCluster) -> None:
    assert redis_cluster.url == f"redis+cluster://127.0.0.1:{redis_cluster.nodes[0].port}"
    assert len(redis_cluster.master_ports()) == 3
    assert redis_cluster.replica_ports() == []
    host, port = redis_cluster.startup_nodes[0]
    client = AsyncRedisCluster(startup_nodes=[ClusterNode(host, port)], decode_responses=True)
    try:
        keys = [f"key:{i}" for i in range(12)]
        owners = {redis_cluster.slot_owner(client.keyslot(k)) for k in keys}
        assert len(owners) == 3  # the keys really are spread over all masters
        for k in keys:
            await client.set(k, k.upper())
        for k in keys:
            assert await client.get(k) == k.upper()
        await client.delete(*keys)
    finally:
        await client.aclose()


async def test_postgres_select_1(pg_dsn: str) -> None:
    assert pg_dsn.startswith("postgresql://postgres@127.0.0.1:")
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        db = await conn.fetchval("select current_database()")
        assert pg_dsn.endswith("/" + db)
    finally:
        await conn.close()


async def test_postgres_stop_start(postgres_server: PostgresServer, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("create table t (x int)")
    await conn.execute("insert into t values (42)")
    postgres_server.stop()
    assert not postgres_server.running
    with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
        await conn.fetchval("select 1")
    await conn.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg_dsn, timeout=2)

    postgres_server.start()
    assert postgres_server.running
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select x from t") == 42  # same data dir
    finally:
        await conn.close()


@pytest.mark.cluster
@pytest.mark.slow
def test_redis_cluster_failover(tmp_path: Path) -> None:
    cluster = start_redis_cluster(tmp_path, masters=3, replicas_per_master=1)
    try:
        assert len(cluster.master_ports()) == 3
        assert len(cluster.replica_ports()) == 3
        victim = cluster.master_ports()[0]
        replicas = set(cluster.replica_ports())
        cluster.kill_node(victim)
        new_master = cluster.wait_failover(victim)
        assert new_master in replicas
        assert victim not in cluster.master_ports()
        assert new_master in cluster.master_ports()
        # the promoted replica serves writes for the slots it took over
        key = next(
            f"k{i}" for i in range(10_000) if cluster.slot_owner(key_slot(b"k%d" % i)) == new_master
        )
        assert redis_command(new_master, "SET", key, "v") == "OK"
        assert redis_command(new_master, "GET", key) == "v"
    finally:
        cluster.stop()
    assert not any(n.running for n in cluster.nodes)
