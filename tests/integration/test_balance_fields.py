"""The three balances (free / app / pool) read back through every reader of Redis.

A reader left on an old field name sees zero, silently; so each reader is checked to
see the same non-zero balances that grants, admissions and refunds left, and an older
version's field names are renamed in place, once.
"""

from __future__ import annotations

from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register
from meter.usage import reconcile
from tests.support.clock import Clock
from tests.support.metering import admitter, seed
from tests.support.settings import make_settings

USD = 1_000_000
PRICE = 200_000


async def funded(rclient: RedisClient, clock: Clock) -> tuple[str, str]:
    """A workspace with $1 free, $2 pool and $3 on its app; paid first, so every debit
    below draws the app's funds, then the pool."""
    cfg = make_settings()
    w = await seed(rclient, cfg, clock, free=1 * USD, pool=2 * USD)
    app = w.apps[0]
    await projection.grant(
        rclient, w.ws, reference="app-3", kind="funds", amount=3 * USD, app_id=app,
        low_threshold=cfg.low_balance_threshold,
    )  # fmt: skip
    return w.ws, app


async def test_every_reader_sees_the_balances_the_scripts_wrote(rclient: RedisClient) -> None:
    clock, cfg = Clock(), make_settings(deduction_order="paid_first")
    ws, app = await funded(rclient, clock)
    adm = admitter(rclient, cfg, clock)
    charged = [await adm.admit(app, "web", f"u{i}") for i in range(3)]
    assert [d.app for d in charged] == [PRICE] * 3
    refunded = await adm.admit(app, "web", "gone")
    assert await adm.refund(app, refunded)  # refund.lua gives the app's funds back
    free, app_left, pool = 1 * USD, 3 * USD - 3 * PRICE, 2 * USD

    bal = await projection.read_balances(rclient, ws)  # plan-usage, console, API
    assert (bal.free, bal.app, bal.pool) == (free, {app: app_left}, pool)
    names = ["free", keys.F_POOL, keys.F_APPS, f"app:{app}"]
    assert await reconcile.redis_values(rclient, ws, names) == {
        "free": free, keys.F_POOL: pool, keys.F_APPS: app_left, f"app:{app}": app_left,
    }  # fmt: skip
    raw_ws = await rclient.hgetall(keys.ws_key(ws))
    raw_app = await rclient.hgetall(keys.app_key(ws, app))
    assert not {b"paid", b"apaid"} & set(raw_ws)
    assert b"paid" not in raw_app
    # admit.lua reads them too: the app's funds and the pool pay, the free credits stay.
    cfg_pool = make_settings(deduction_order="paid_first")
    more = [await admitter(rclient, cfg_pool, clock).admit(app, "web", f"v{i}") for i in range(2)]
    assert all(d.units == 1 and d.free == 0 for d in more)


async def test_an_older_versions_field_names_are_renamed_once(rclient: RedisClient) -> None:
    """A Redis written before the rename (paid / apaid / paid) keeps its money."""
    clock, cfg = Clock(), make_settings(deduction_order="paid_first")
    ws, app = await funded(rclient, clock)
    wk, ak = keys.ws_key(ws), keys.app_key(ws, app)
    for key, new, old in ((wk, keys.F_POOL, "paid"), (wk, keys.F_APPS, "apaid"),
                          (ak, keys.F_APP, "paid")):  # fmt: skip
        value = await rclient.hget(key, new)
        await rclient.hdel(key, new)
        await rclient.hset(key, old, value)  # type: ignore[arg-type]
    assert (await projection.read_balances(rclient, ws)).pool == 0  # what a stale reader sees

    assert await projection.rename_legacy_fields(rclient) >= 3
    bal = await projection.read_balances(rclient, ws)
    assert (bal.pool, bal.app) == (2 * USD, {app: 3 * USD})
    assert await register(rclient, "rename_fields")(keys=[keys.ws_prefix(ws)]) == 0  # once
    assert not {b"paid", b"apaid"} & set(await rclient.hgetall(wk))
    d = await admitter(rclient, cfg, clock).admit(app, "web", "u")
    assert (d.units, d.app) == (1, PRICE)
