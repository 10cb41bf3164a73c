"""Server fixtures: real Redis, Redis Cluster and PostgreSQL on loopback.

Servers are session-scoped and started lazily (only when a test asks for them): one
set per pytest process, so each worker of ``pytest -n`` (``make tests``) has its own, in
its own temporary directory, on ports no other worker is given (``free_port``). The
function-scoped fixtures give each test a clean slate:

* ``redis_url`` - FLUSHALLed standalone Redis, ``redis://127.0.0.1:P/0``
* ``redis_cluster`` - 3-master Redis Cluster (marked ``cluster`` automatically)
* ``pg_dsn`` - a fresh PostgreSQL database per test (marked ``postgres`` automatically)
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.support.servers import (
    PostgresServer,
    RedisCluster,
    RedisServer,
    find_pg_bin,
    start_postgres,
    start_redis,
    start_redis_cluster,
)
from tests.support.servers.resp import redis_command

_INSTALL_HINT = "run `make test` (it runs scripts/install-deps.sh, which installs it)"
FLUSHALL_BOUND_S = 120.0


def _require(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found on PATH: {_INSTALL_HINT}", pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag tests by the servers they use, so `-m "not cluster"` etc. work reliably."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        # Servers asked for at run time (request.getfixturevalue) show in the parameters.
        callspec = getattr(item, "callspec", None)
        params = {str(v) for v in callspec.params.values()} if callspec is not None else set()
        if "redis_cluster" in fixtures or "cluster" in params:
            item.add_marker(pytest.mark.cluster)
        if {"pg_dsn", "postgres_server"} & set(fixtures) or {"postgres", "postgresql"} & params:
            item.add_marker(pytest.mark.postgres)


# ----------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Session-wide standalone redis-server on a free 127.0.0.1 port."""
    _require("redis-server")
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, FLUSHALLed (and restarted if a test stopped it)."""
    if not redis_server.running:
        redis_server.start()
    # A bound on a hang only: after a test that wrote 100,000 messages' keys, FLUSHALL on
    # a loaded 2-core machine outlasted redis_command's default 2 s (a setup error).
    redis_command(redis_server.port, "FLUSHALL", host=redis_server.host, timeout=FLUSHALL_BOUND_S)
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Session-wide Redis Cluster: 3 masters, no replicas (``@pytest.mark.cluster``)."""
    _require("redis-server", "redis-cli")
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield cluster
    cluster.stop()


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """Session-wide PostgreSQL (initdb'd into a temp dir) on a free 127.0.0.1 port."""
    _require("psql")
    try:
        find_pg_bin()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a brand-new database (dropped afterwards) on the session PostgreSQL."""
    if not postgres_server.running:  # a test simulated an outage and left it down
        postgres_server.start()
    name = f"t_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    if postgres_server.running:
        postgres_server.drop_database(name)
