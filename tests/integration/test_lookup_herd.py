"""The per-worker caches in front of Redis (an app's upstream, a channel's secret) read
a value once however many messages find it missing or expired at the same time (a
thundering herd at hundreds of connections made one read per waiting message), and read
it again ahead of its expiry, in the background, so that traffic never waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.channel_keys import ChannelKeys
from gateway.upstreams import Upstreams
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient, connect
from tests.support.channel_keys import SECRET, SECRET_KEY, set_secret
from tests.support.clock import Clock
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


# HMGETs of one upstream read: the app's hash and its workspace's (gateway/upstreams.py).
READ = 2


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
        assert await calls(client, "hmget") - before == READ
    finally:
        await client.aclose()


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Wait for ``check()`` (a read another task makes), however slow the machine."""
    for _ in range(600):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")


async def test_an_upstream_is_read_again_ahead_of_its_expiry_without_a_wait(
    redis_url: str, tmp_path: Path
) -> None:
    settings, clock = make_settings(redis_url, tmp_path), Clock()
    client = connect(redis_url)
    try:
        apps = {APP: {"product": "automation", "upstream_url": "http://127.0.0.1:9/"}}
        await seed(client, settings, "wsherd", apps)
        ups = Upstreams(client, default_url=None, timeout=30, max_age=1.0, clock=clock)
        before = await calls(client, "hmget")
        assert await ups.resolve(APP) == "http://127.0.0.1:9/"
        apps[APP]["upstream_url"] = "http://127.0.0.2:9/"  # changed by the admin API
        await seed(client, settings, "wsherd", apps)
        clock.advance(0.8)  # young: used as it is
        assert await ups.resolve(APP) == "http://127.0.0.1:9/"
        assert await calls(client, "hmget") - before == READ
        clock.advance(0.1)  # in its last eighth: served, and read again meanwhile
        assert await ups.resolve(APP) == "http://127.0.0.1:9/"

        async def changed() -> bool:
            return await ups.resolve(APP) == "http://127.0.0.2:9/"

        await until(changed)
        assert await calls(client, "hmget") - before == 2 * READ  # one read ahead, shared
        clock.advance(0.7)  # the refreshed answer (read at 0.9) is young: no read
        await asyncio.gather(*(ups.resolve(APP) for _ in range(32)))
        assert await calls(client, "hmget") - before == 2 * READ
    finally:
        await client.aclose()


async def test_a_channel_secret_is_read_again_ahead_of_its_expiry_without_a_wait(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path, secret_key=SECRET_KEY)
    clock = Clock()
    client = connect(redis_url)
    try:
        await set_secret(client, settings, APP, "slack")
        cache = ChannelKeys(client, settings, clock=clock)
        before = await calls(client, "hget")
        first = await cache.get(APP, "slack")
        assert first is not None
        assert first.secret == SECRET
        await set_secret(client, settings, APP, "slack", "rotated-" + "y" * 30)
        clock.advance(0.9)  # of 1 s: served as cached, read again in the background
        again = await cache.get(APP, "slack")
        assert again is not None
        assert again.secret == SECRET

        async def rotated() -> bool:
            got = await cache.get(APP, "slack")
            return got is not None and got.secret == "rotated-" + "y" * 30

        await until(rotated)
        assert await calls(client, "hget") - before == 2
    finally:
        await client.aclose()


async def test_an_apps_tenant_is_its_workspaces_owner_read_with_its_upstream(
    redis_url: str, tmp_path: Path
) -> None:
    """The tenant whose connection shares a message takes (gateway/upstreams.py): the
    workspace's owner once the app was read, in the same round trip as its upstream; the
    workspace before, or without a projected owner."""
    settings = make_settings(redis_url, tmp_path)
    client = connect(redis_url)
    try:
        up = {"product": "automation", "upstream_url": "http://127.0.0.1:9/"}
        await seed(client, settings, "wsowned", {"wsowned_app1": up}, owner="usrann")
        await seed(client, settings, "wsorphan", {"wsorphan_app1": up})
        ups = Upstreams(client, default_url=None, timeout=30)
        assert ups.tenant("wsowned_app1") == "wsowned"  # never read yet
        assert await ups.resolve("wsowned_app1") == "http://127.0.0.1:9/"
        assert await ups.resolve("wsorphan_app1") == "http://127.0.0.1:9/"
        assert (ups.tenant("wsowned_app1"), ups.tenant("wsorphan_app1")) == ("@usrann", "wsorphan")
        assert ups.tenant("no such app") is None
    finally:
        await client.aclose()
