"""The Lua scripts of ``meter/lua``, loaded from the package and registered once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from meter.redis_layer.client import RedisClient

# A line "-- #include <file>.lua" of a script is replaced by that file of meter/lua.
_INCLUDE = re.compile(r"^-- #include ([a-z_]+\.lua)$", re.M)


def _read(file: str) -> str:
    return resources.files("meter").joinpath("lua", file).read_text()


@cache
def lua_source(name: str) -> str:
    """Source of ``meter/lua/<name>.lua`` (shipped inside the wheel), assembled.

    Redis runs a script as one chunk and cannot load files, so a script too long for one
    file is kept in fragments: each ``-- #include <file>.lua`` line of ``<name>.lua`` is
    replaced, at load time, by that file of ``meter/lua`` (one level: a fragment includes
    nothing). The fragments become part of one chunk and share the script's locals, in
    the order the script includes them (``admit.lua``: ``lib_sessions``, ``lib_records``,
    ``admit_batch``, ``admit_message``, ``admit_rules``, ``admit_full``; ``refund.lua``:
    ``lib_sessions``, ``lib_records``, ``refund_free``, ``refund_counts``;
    ``peek.lua``: ``lib_peek``). admit.lua includes
    ``admit_rules`` and ``admit_full`` inside a function of its loop, made only when needed.
    """
    return _INCLUDE.sub(lambda m: _read(m.group(1)), _read(f"{name}.lua"))


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
