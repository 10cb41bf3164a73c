"""Redis connections: a single server or a Redis Cluster, chosen by the URL."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

log = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster

CLUSTER_SCHEME = "redis+cluster://"


def connect(url: str, *, timeout: float = 5.0, max_connections: int = 64) -> RedisClient:
    """Client for ``redis://`` / ``rediss://`` / ``unix://`` or ``redis+cluster://host:port``."""
    common: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "decode_responses": False,
    }
    if url.startswith(CLUSTER_SCHEME):
        parts = urlsplit("redis://" + url[len(CLUSTER_SCHEME) :])
        return RedisCluster(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            password=parts.password,
            max_connections=max_connections,
            **common,
        )
    # A blocking pool waits (up to the timeout) for a free connection instead of failing
    # a burst that momentarily needs more than max_connections.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, **common
    )
    return Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


async def warm_up(client: RedisClient) -> None:
    """Load a cluster client's slot map before traffic arrives.

    redis-py's async cluster client, first used by many coroutines at once, can hand a
    half-set-up connection to a command (AttributeError on its writer); initializing
    once up front avoids that race. Best effort: an unreachable cluster shows later.
    """
    if isinstance(client, RedisCluster):
        try:
            await client.initialize()
        except Exception:  # reported by /readyz and by the first admission
            log.warning("redis cluster not reachable at start-up", exc_info=True)
