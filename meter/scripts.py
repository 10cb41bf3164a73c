"""The Lua scripts of ``meter/lua``, loaded from the package and registered once."""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.commands.core import AsyncScript

from meter.redis_client import RedisClient


@cache
def lua_source(name: str) -> str:
    """Source of ``meter/lua/<name>.lua`` (shipped inside the wheel)."""
    return resources.files("meter").joinpath("lua", f"{name}.lua").read_text()


def register(client: RedisClient, name: str) -> AsyncScript:
    """Register a script; redis-py caches its SHA and reloads it after NOSCRIPT."""
    return client.register_script(lua_source(name))
