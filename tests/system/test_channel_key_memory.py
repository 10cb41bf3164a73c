"""A worker's cache of channel secrets (gateway/channel_keys.py) is asked with the app id
and channel of every ``/hooks`` and ``/notify`` URL, before the app is looked up. It once
remembered whatever a client made up, kilobytes each, up to 100 000 entries: one
unauthenticated client grew a worker by gigabytes in under a minute (out of memory in
its pod). Now only names that could hold a secret are remembered (a well-formed app id
and channel name, both short), so what it keeps is small whatever clients send. Real
Redis, a real gateway, real HTTP requests through the real route."""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from pathlib import Path

import aiohttp
import pytest

from gateway import channel_keys
from gateway.appkeys import PROXY
from gateway.channel_keys import ChannelKeys
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.channel_keys import SECRET_KEY, hs256, set_secret
from tests.support.settings import make_settings

WS = "ckmem"
APP = f"{WS}_app1"
N = 150
LONG = 2000  # characters of a made-up id: an aiohttp request line holds 8 KiB


def cache_of(running: Running) -> ChannelKeys:
    return running.gateway.traffic[PROXY].auth._keys


def made_up() -> str:
    return uuid.uuid4().hex + "a" * LONG


async def test_made_up_app_ids_and_channels_are_not_remembered(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(redis_url, tmp_path, secret_key=SECRET_KEY)
    apps = {APP: {"product": "automation", "upstream_url": bot.url}}
    await seed(rclient, settings, WS, apps, free=10_000_000)
    await set_secret(rclient, settings, APP, "web")
    async with running_gateway(settings) as gw:
        cache = cache_of(gw)
        urls = []
        for _ in range(N):
            urls += [
                f"{gw.url}/hooks/web/{made_up()}",  # malformed app id
                f"{gw.url}/hooks/{made_up()}/{APP}",  # channel name no secret can have
                f"{gw.url}/hooks/Web{uuid.uuid4().hex}/{APP}",  # upper case: not a channel
                f"{gw.url}/notify/web/{made_up()}",
                f"{gw.url}/notify/{made_up()}/{APP}",
            ]
        statuses = set()
        for url in urls:
            async with http.get(url) as resp:
                statuses.add(resp.status)
                await resp.read()
        assert statuses <= {400, 401, 403, 404}, statuses  # 400: no channel user
        assert len(cache._cache) == 0
        # A channel that has a secret is still remembered (and verified).
        headers = {"Authorization": f"Bearer {hs256('alice')}"}
        async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"hi", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        assert len(cache._cache) == 1


async def test_well_formed_unknown_apps_stay_small_and_bounded(
    redis_url: str, tmp_path: Path, rclient: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unknown but well-formed apps are remembered (as having no secret: one read per
    ``channel_secret_max_age_s``), each a few hundred bytes, at most MAX_ENTRIES of them."""
    settings = make_settings(redis_url, tmp_path, secret_key=SECRET_KEY)
    cache = ChannelKeys(rclient, settings)
    longest_channel = "c" * 32
    n = 2000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            app = f"{uuid.uuid4().hex}_{uuid.uuid4().hex}"  # the longest well-formed id
            assert await cache.get(app, longest_channel) is None
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache._cache) == n
    assert grown * channel_keys.MAX_ENTRIES / n < 50 * 2**20, grown / n
    # Past the bound the whole is forgotten and filled again by what comes next.
    monkeypatch.setattr(channel_keys, "MAX_ENTRIES", 100)
    for _ in range(250):
        await cache.get(f"{uuid.uuid4().hex}_{uuid.uuid4().hex}", longest_channel)
        assert len(cache._cache) <= 100
