"""Redis must never evict creditgate's keys: balances, grant markers, charge records.

A Redis with ``maxmemory`` set and a ``maxmemory-policy`` other than ``noeviction``
deletes keys when memory runs short: a workspace's balances (then rebuilt from the
store), an app's hash, a charge record a redelivery is checked against, a claimed bucket
not yet flushed. ``volatile-*`` policies take only keys with a time to live, but charge
records and leases have one. So creditgate refuses such a Redis at start-up and reports
it on ``/readyz``; with ``noeviction`` a full Redis refuses writes instead, and creditgate
answers with its fail mode.

The policy is read from ``INFO memory`` (managed Redis often disables ``CONFIG``).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import RedisCluster

from meter.redis_layer.client import RedisClient

SAFE_POLICY = "noeviction"


def _nodes(info: dict[Any, Any]) -> list[dict[Any, Any]]:
    """One INFO section per node (a cluster client answers by node name)."""
    if "maxmemory_policy" in info or "maxmemory" in info:
        return [info]
    return [v for v in info.values() if isinstance(v, dict)]


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def eviction_problem(client: RedisClient) -> str | None:
    """``None`` when Redis cannot evict keys; else what it would evict with, e.g.
    ``maxmemory-policy allkeys-lru with maxmemory 104857600``."""
    if isinstance(client, RedisCluster):  # every master: each holds some workspaces
        info: dict[Any, Any] = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
    else:
        info = await client.info("memory")
    for node in _nodes(info):
        limit = int(node.get("maxmemory", 0) or 0)
        policy = _text(node.get("maxmemory_policy", SAFE_POLICY))
        if limit and policy != SAFE_POLICY:
            return f"maxmemory-policy {policy} with maxmemory {limit}"
    return None


def advice(problem: str) -> str:
    """The one-line fix of :func:`eviction_problem`'s answer."""
    return (
        f"Redis may evict keys ({problem}): an evicted balance or charge record loses or "
        f"hands out money; set maxmemory-policy {SAFE_POLICY} (CONFIG SET maxmemory-policy "
        f"{SAFE_POLICY}, or your provider's parameter group), or unset maxmemory"
    )
