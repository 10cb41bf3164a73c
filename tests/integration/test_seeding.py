"""The one seeder (meter.accounts.seeding) on a real Redis: what the tests and the demo
seed is what the balances read back."""

from __future__ import annotations

from gateway.demo import seed_demo
from meter.accounts import projection
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.clock import T0
from tests.support.settings import make_settings


async def test_seed_grants_each_balance_once(rclient: RedisClient) -> None:
    cfg = make_settings()
    apps = {
        "sdws_app1": {"product": "automation", "funds": 300},
        "sdws_app2": {"product": "search"},
    }
    for _ in range(2):  # the grants are idempotent by reference
        await seed(rclient, cfg, "sdws", apps, free=1_000, pool=50, now=T0)
    b = await projection.read_balances(rclient, "sdws")
    assert (b.free, b.pool, b.app) == (1_000, 50, {"sdws_app1": 300, "sdws_app2": 0})
    assert b.free_expires_ms == int((T0 + cfg.free_credit_validity_s) * 1000)


async def test_the_demo_seeds_redis_alone_when_the_store_is_down(
    redis_url: str, rclient: RedisClient
) -> None:
    cfg = make_settings(redis_url, store_url="postgresql://postgres@127.0.0.1:1/none")
    seeded = await seed_demo(cfg, "http://127.0.0.1:9")
    assert seeded.owner_token is None  # no store: no user, no token
    b = await projection.read_balances(rclient, seeded.ws)
    assert (b.free, b.pool) == (cfg.free_credits, 0)
    assert b.app == {seeded.ample: 0, seeded.tight: 600_000}
