"""The per-worker caches in front of Redis read a value once however many messages
find it missing or expired at the same time (a thundering herd at hundreds of
connections made one read per waiting message)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.channel_keys import ChannelKeys
from gateway.upstreams import Upstreams
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient, connect
from tests.support.channel_keys import SECRET, SECRET_KEY, set_secret
from tests.support.settings import make_settings

APP = "wsherd_app1"


async def calls(client: RedisClient, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_concurrent_messages_read_a_channel_secret_once(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path, secret_key=SECRET_KEY)
    client = connect(redis_url)
    try:
        await set_secret(client, settings, APP, "slack")
        cache = ChannelKeys(client, settings)
        before = await calls(client, "hget")
        got = await asyncio.gather(*(cache.get(APP, "slack") for _ in range(64)))
        assert {k.secret if k else None for k in got} == {SECRET}
        assert await calls(client, "hget") - before == 1
        # Cached: no read at all for the next messages.
        await asyncio.gather(*(cache.get(APP, "slack") for _ in range(16)))
        assert await calls(client, "hget") - before == 1
    finally:
        await client.aclose()


async def test_concurrent_messages_resolve_an_upstream_once(redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, tmp_path)
    client = connect(redis_url)
    try:
        apps = {APP: {"product": "automation", "upstream_url": "http://127.0.0.1:9/"}}
        await seed(client, settings, "wsherd", apps)
        ups = Upstreams(client, default_url=None, timeout=30)
        before = await calls(client, "hmget")
        got = await asyncio.gather(*(ups.resolve(APP) for _ in range(64)))
        assert set(got) == {"http://127.0.0.1:9/"}
        assert await calls(client, "hmget") - before == 1
    finally:
        await client.aclose()
