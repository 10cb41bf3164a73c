"""Fixtures of the integration tests that more than one module uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meter.redis_layer.client import RedisClient, connect
from tests.support.servers import RedisCluster, RedisServer


@pytest.fixture(params=["single", "cluster"])
async def client(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[RedisClient]:
    """A real single Redis and a real 3-master Redis Cluster, for tests that must hold on
    both (a module may define its own ``client``)."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url = cluster.url
    else:
        if not redis_server.running:
            redis_server.start()
        url = redis_server.url
    c = connect(url)
    yield c
    await c.aclose()
