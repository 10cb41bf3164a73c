"""The Lua scripts of ``meter/lua``, loaded from the package and registered once."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from meter.redis_layer.client import RedisClient


@cache
def lua_source(name: str) -> str:
    """Source of ``meter/lua/<name>.lua`` (shipped inside the wheel)."""
    return resources.files("meter").joinpath("lua", f"{name}.lua").read_text()


def register(client: RedisClient, name: str) -> AsyncScript:
    """Register a script; redis-py caches its SHA and reloads it after NOSCRIPT."""
    return client.register_script(lua_source(name))


async def run(
    script: AsyncScript, client: RedisClient, keys: Sequence[str], args: Sequence[EncodableT]
) -> Any:
    """Run a registered script; on a cluster, survive a master that never saw it.

    After a failover the promoted replica has an empty script cache, and redis-py's
    own NOSCRIPT fallback may load the script on another node: load it on every node
    and try once more.
    """
    try:
        return await script(keys=keys, args=args)
    except NoScriptError:
        if not isinstance(client, RedisCluster):
            raise
        await client.execute_command(
            "SCRIPT", "LOAD", script.script, target_nodes=RedisCluster.ALL_NODES
        )
        return await script(keys=keys, args=args)
