"""Redis connections: a single server or a Redis Cluster, chosen by the URL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster

log = logging.getLogger(__name__)

RedisClient = Redis | RedisCluster
T = TypeVar("T")
_lingering: set[asyncio.Task[Any]] = set()  # calls given up on, until their cleanup ends

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


async def hard_deadline(call: Awaitable[T], seconds: float) -> T:
    """``call``'s result, or TimeoutError once ``seconds`` have passed.

    A hard deadline: ``asyncio.wait_for`` (Python 3.11) and ``asyncio.timeout`` both wait
    for the cancelled call to finish its cleanup, and redis-py's, on a connection Redis
    no longer answers, may take far longer than the deadline (a request held past it,
    neither answered nor owed). Here the call runs as a task, cancelled at the deadline
    and left to finish in the background; the caller is answered at once. Cancelling the
    caller cancels the call."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait((task,), timeout=seconds)
    except BaseException:
        task.cancel()
        _linger(task)
        raise
    if not done:
        task.cancel()
        _linger(task)
        raise TimeoutError(f"redis did not answer within {seconds} s")
    return task.result()


def _linger(task: asyncio.Task[Any]) -> None:
    _lingering.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _lingering.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of a call given up on is no news
