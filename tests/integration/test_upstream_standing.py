"""A callback's standing (suspended, unlicensed) is never taken from a missing cache entry:
the upstream cache is emptied when full, and anyone can fill it with made-up app ids while
a callback waits for its body (review contract2, finding 2)."""

from __future__ import annotations

from pathlib import Path

from gateway.upstreams import Upstreams
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import connect
from tests.support.settings import make_settings

WS = "wsstanding"
APP = f"{WS}_app1"


async def test_a_forgotten_entry_is_read_again_not_taken_as_standing(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url, tmp_path)
    client = connect(redis_url)
    try:
        apps = {APP: {"product": "automation", "upstream_url": "http://127.0.0.1:9/"}}
        await seed(client, settings, WS, apps)
        await client.hset(keys.app_key(WS, APP), "suspended", "1")
        ups = Upstreams(client, default_url=None, timeout=30)
        await ups.resolve(APP)
        assert await ups.refusal(APP) == "app_suspended"
        ups._cache.clear()  # what a full cache does when one more app id is read
        assert await ups.refusal(APP) == "app_suspended"
    finally:
        await client.aclose()
