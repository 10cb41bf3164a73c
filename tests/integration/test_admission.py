"""Acceptance tests of the metering core against a real redis-server and a real Redis Cluster."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from config.money import InvalidAmount, parse_amount
from meter.accounts import projection
from meter.admission.decision import Code
from meter.errors import InvalidInput, MeteringUnavailable, NotFound
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from tests.support.clock import Clock
from tests.support.metering import admission, admitter, agg_totals, events, seed
from tests.support.servers import RedisServer
from tests.support.settings import make_settings

PRICE = 200_000  # $0.20 per session, the standard catalog price
USD = 1_000_000


@pytest.fixture
def single(rclient: RedisClient) -> RedisClient:
    """The single redis-server, for tests of what a cluster does not change."""
    return rclient


# --- billing sessions --------------------------------------------------------------------


async def test_31_minute_conversation_is_three_sessions(client: RedisClient) -> None:
    clock, _, w, adm = await admission(client, free=100 * USD)
    units = []
    for minute in (0, 10, 14, 20, 29, 31):
        clock.now = clock.now - clock.now % 1 if minute == 0 else clock.now
        d = await adm.admit(w.apps[0], "slack", "U1")
        units.append(d.units)
        if minute != 31:
            nxt = {0: 10, 10: 14, 14: 20, 20: 29, 29: 31}[minute]
            clock.advance((nxt - minute) * 60)
    assert units == [1, 0, 0, 1, 0, 1]
    bal = await projection.read_balances(client, w.ws)
    assert bal.free == 100 * USD - 3 * PRICE


async def test_five_messages_within_a_minute_are_one_session(client: RedisClient) -> None:
    clock, _, w, adm = await admission(client, free=10 * USD)
    decisions = []
    for _ in range(5):
        decisions.append(await adm.admit(w.apps[0], "msteams", "user-1"))
        clock.advance(12)
    assert [d.units for d in decisions] == [1, 0, 0, 0, 0]
    assert len({d.bsid for d in decisions}) == 1
    assert (await agg_totals(client, w.ws))["m"] == 5


async def test_message_after_idle_timeout_starts_a_new_session(client: RedisClient) -> None:
    clock, _, w, adm = await admission(client, free=10 * USD, session_block_s=60, session_idle_s=10)
    first = await adm.admit(w.apps[0], "web", "u")
    clock.advance(9)
    inside = await adm.admit(w.apps[0], "web", "u")
    clock.advance(10)  # 10 s of silence: the conversation ended
    after = await adm.admit(w.apps[0], "web", "u")
    assert (first.units, inside.units, after.units) == (1, 0, 1)
    assert first.bsid == inside.bsid != after.bsid


async def test_paid_session_keeps_serving_when_credit_runs_out(client: RedisClient) -> None:
    clock, _, w, adm = await admission(client, free=PRICE)
    assert (await adm.admit(w.apps[0], "web", "a")).units == 1
    assert (await adm.admit(w.apps[0], "web", "b")).reason == "credits_exhausted"
    clock.advance(60)
    assert (await adm.admit(w.apps[0], "web", "a")).admitted  # inside the paid session


# --- concurrency and exactness ------------------------------------------------------------


async def test_2000_concurrent_users_with_credit_for_1500(client: RedisClient) -> None:
    # Every one of the 2,000 must be decided: a patient Redis timeout keeps a busy machine
    # from turning a slow batch into "metering unavailable" (at the 0.5 s default, half
    # were refused on a 2-core machine busy with other work).
    _, _, w, adm = await admission(
        client,
        free=1500 * PRICE,
        rate_per_minute=10_000,
        rate_per_hour=100_000,
        redis_timeout_s=30,
    )
    ds = await asyncio.gather(*(adm.admit(w.apps[0], "web", f"u{i}") for i in range(2000)))
    outcome = Counter(d.reason for d in ds)
    assert outcome == {None: 1500, "credits_exhausted": 500}
    bal = await projection.read_balances(client, w.ws)
    assert bal.free == 0
    totals = await agg_totals(client, w.ws)
    assert totals["n"] == 1500
    assert totals["f"] == 1500 * PRICE
    assert totals["r:credits_exhausted"] == 500
    assert sum(d.charged for d in ds) == 1500 * PRICE


async def test_retries_of_the_same_keys_are_never_charged_twice(client: RedisClient) -> None:
    # 3,500 at once: on a busy machine a batch may take long; a patient Redis timeout keeps
    # that from turning into "metering unavailable" (this test is about retries).
    _, _, w, adm = await admission(
        client,
        free=1500 * PRICE,
        rate_per_minute=10_000,
        rate_per_hour=100_000,
        redis_timeout_s=30,
    )
    rng = random.Random(7)
    calls = [(f"u{i}", f"evt-{i}") for i in range(2000)]
    calls += [calls[rng.randrange(2000)] for _ in range(1500)]  # retried deliveries
    rng.shuffle(calls)
    ds = await asyncio.gather(*(adm.admit(w.apps[0], "slack", u, k) for u, k in calls))
    charged_keys = Counter(d.key for d in ds if d.units)
    assert sum(charged_keys.values()) == 1500
    assert max(charged_keys.values()) == 1
    assert all(d.units == 0 and d.charged == 0 for d in ds if d.duplicate)
    assert (await projection.read_balances(client, w.ws)).free == 0
    assert (await agg_totals(client, w.ws))["n"] == 1500


# --- credits ---------------------------------------------------------------------------------


async def test_expired_free_credits_lapse_and_refuse_without_paid_funds(
    client: RedisClient,
) -> None:
    clock, cfg, w, adm = await admission(client, free=500 * USD, free_credit_validity_s=3600)
    assert (await adm.admit(w.apps[0], "web", "a")).units == 1
    clock.advance(3600)
    d = await adm.admit(w.apps[0], "web", "b")
    assert d.reason == "free_credits_expired"
    bal = await projection.read_balances(client, w.ws)
    assert (bal.free, bal.lapsed) == (0, 500 * USD - PRICE)
    assert "free_credits.expired" in await events(client, w.ws)
    # Paid funds serve once the free credits are gone.
    await projection.grant(
        client,
        w.ws,
        reference="topup-1",
        kind="funds",
        amount=100 * USD,
        low_threshold=cfg.low_balance_threshold,
    )
    d = await adm.admit(w.apps[0], "web", "b")
    assert (d.units, d.pool, d.free) == (1, PRICE, 0)
    assert (await projection.read_balances(client, w.ws)).lapsed == 500 * USD - PRICE


@pytest.mark.parametrize("order", ["free_first", "paid_first"])
async def test_deduction_order_and_app_funds(single: RedisClient, order: str) -> None:
    clock, cfg = Clock(), make_settings(deduction_order=order)
    w = await seed(single, cfg, clock, free=PRICE // 2, pool=PRICE)
    await projection.grant(
        single,
        w.ws,
        reference="app-funds",
        kind="funds",
        amount=PRICE // 4,
        app_id=w.apps[0],
        low_threshold=cfg.low_balance_threshold,
    )
    d = await admitter(single, cfg, clock).admit(w.apps[0], "web", "u")
    if order == "free_first":
        assert (d.free, d.app, d.pool) == (PRICE // 2, PRICE // 4, PRICE // 4)
    else:
        assert (d.free, d.app, d.pool) == (0, PRICE // 4, 3 * PRICE // 4)
    assert d.charged == PRICE


async def test_app_denied_free_credits_uses_paid_only(single: RedisClient) -> None:
    """An app denied the free credits pays from its own funds, then from the pool, and is
    refused once both are spent although the workspace still holds free credits."""
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, free=100 * USD, pool=PRICE, use_free=False)
    app = w.apps[0]
    await projection.grant(
        single, w.ws, reference="app-funds", kind="funds", amount=PRICE, app_id=app,
        low_threshold=cfg.low_balance_threshold,
    )  # fmt: skip
    adm = admitter(single, cfg, clock)
    first = await adm.admit(app, "web", "u1")
    second = await adm.admit(app, "web", "u2")
    assert (first.code, first.free, first.app, first.pool) == (0, 0, PRICE, 0)
    assert (second.code, second.free, second.app, second.pool) == (0, 0, 0, PRICE)
    left = await projection.read_balances(single, w.ws)
    assert left.free == 100 * USD  # the free credits it may not use are untouched
    assert left.app.get(app, 0) == 0
    assert left.pool == 0
    third = await adm.admit(app, "web", "u3")
    assert third.reason == "credits_exhausted"


async def test_grant_is_idempotent_by_reference(single: RedisClient) -> None:
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock)
    args = dict(reference="r1", kind="funds", amount=100 * USD, low_threshold=1)
    assert await projection.grant(single, w.ws, **args)  # type: ignore[arg-type]
    assert not await projection.grant(single, w.ws, **args)  # type: ignore[arg-type]
    assert (await projection.read_balances(single, w.ws)).pool == 100 * USD


async def test_crossing_events_fire_once(single: RedisClient) -> None:
    _, _, w, adm = await admission(single, free=3 * PRICE)
    for i in range(6):
        await adm.admit(w.apps[0], "web", f"u{i}")
    evs = Counter(await events(single, w.ws))
    assert evs["free_credits.exhausted"] == 1
    assert evs["app.inactive"] == 1
    assert evs["balance.low"] == 1


# --- refunds -----------------------------------------------------------------------------


async def test_refund_restores_balance_and_reopens_the_session(client: RedisClient) -> None:
    _, _, w, adm = await admission(client, free=10 * USD)
    d = await adm.admit(w.apps[0], "slack", "U1", "ev1")
    assert d.units == 1
    assert await adm.refund(w.apps[0], d)
    assert not await adm.refund(w.apps[0], d)  # idempotent
    bal = await projection.read_balances(client, w.ws)
    assert bal.free == 10 * USD
    totals = await agg_totals(client, w.ws)
    assert (totals["n"], totals["f"], totals["x"]) == (0, 0, 1)
    # The retry of the same delivery is charged afresh, not taken as a duplicate.
    again = await adm.admit(w.apps[0], "slack", "U1", "ev1")
    assert (again.units, again.duplicate) == (1, False)
    # A stale refund of the first attempt no longer matches and changes nothing.
    assert not await adm.void(w.apps[0], "ev1", d.token)
    assert (await projection.read_balances(client, w.ws)).free == 10 * USD - PRICE


async def test_duplicates_and_in_session_messages_are_not_refunded(single: RedisClient) -> None:
    _, _, w, adm = await admission(single, free=10 * USD)
    first = await adm.admit(w.apps[0], "web", "u", "k")
    dup = await adm.admit(w.apps[0], "web", "u", "k")
    inside = await adm.admit(w.apps[0], "web", "u")
    assert dup.duplicate
    assert not await adm.refund(w.apps[0], dup)
    assert not await adm.refund(w.apps[0], inside)
    assert first.units == 1
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD - PRICE


# --- rate limits --------------------------------------------------------------------------


async def test_minute_limit_refuses_with_seconds_to_wait(client: RedisClient) -> None:
    clock, _, w, adm = await admission(
        client, free=100 * USD, rate_per_minute=5, rate_per_hour=1000
    )
    ds = [await adm.admit(w.apps[0], "web", f"u{i}") for i in range(6)]
    assert [d.reason for d in ds] == [None] * 5 + ["rate_limited"]
    assert 0 < ds[-1].retry_after_ms <= 62_000
    clock.advance(ds[-1].retry_after_ms / 1000)
    assert (await adm.admit(w.apps[0], "web", "later")).admitted


async def test_hour_limit_holds_while_every_minute_is_under_its_own(
    client: RedisClient,
) -> None:
    clock, _, w, adm = await admission(client, free=100 * USD, rate_per_minute=4, rate_per_hour=10)
    reasons = []
    for minute in range(4):
        for i in range(3):  # 3 per minute: always under the minute limit
            reasons.append((await adm.admit(w.apps[0], "web", f"u{minute}-{i}")).reason)
        clock.advance(61)
    assert reasons.count(None) == 10
    assert reasons[10:] == ["rate_limited"] * 2
    refused = await adm.admit(w.apps[0], "web", "x")
    assert refused.reason == "rate_limited"
    assert refused.retry_after_ms > 60_000  # waits for the hour window, not the minute


# --- enterprise --------------------------------------------------------------------------


async def test_enterprise_licences_count_not_debit_and_cap_usage(client: RedisClient) -> None:
    clock, cfg = Clock(), make_settings()
    lic = {"search": projection.Licence(usage_limit=3, per_minute=100, per_hour=1000)}
    w = await seed(
        client, cfg, clock, plan="enterprise", licences=lic, products=("automation", "search")
    )
    adm = admitter(client, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "u")).reason == "product_not_licensed"
    ds = [await adm.admit(w.apps[1], "web", f"u{i}") for i in range(4)]
    assert [d.reason for d in ds] == [None, None, None, "usage_limit_reached"]
    assert all(d.charged == 0 and d.invoiced == PRICE for d in ds[:3])
    bal = await projection.read_balances(client, w.ws)
    assert (bal.free, bal.pool) == (0, 0)
    assert (await agg_totals(client, w.ws))["i"] == 3 * PRICE
    assert (await events(client, w.ws)).count("usage_limit.reached") == 1
    # Licensing the product takes effect on the next message: no restart, no cache.
    lic["automation"] = projection.Licence(usage_limit=10, per_minute=10, per_hour=100)
    await projection.put_workspace(
        client, w.ws, plan="enterprise", catalog=__import__("config").load_catalog(), licences=lic
    )
    assert (await adm.admit(w.apps[0], "web", "u")).admitted


async def test_suspended_app_is_refused(single: RedisClient) -> None:
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, free=10 * USD)
    await projection.put_app(single, w.apps[0], product="automation", suspended=True)
    d = await admitter(single, cfg, clock).admit(w.apps[0], "web", "u")
    assert d.reason == "app_suspended"


# --- bad input and failures -------------------------------------------------------------------


async def test_unknown_and_malformed_ids_are_refused_and_change_nothing(
    single: RedisClient,
) -> None:
    _, _, w, adm = await admission(single, free=10 * USD)
    before = sorted(await single.keys("*"))
    for app in (f"{w.ws}_nosuchapp", "nows1234_app1", "Bad-Id", "", "a" * 80, "x_y"):
        assert (await adm.admit(app, "web", "u")).code == Code.UNKNOWN_APP
    assert (await adm.admit(w.apps[0], "BAD CHANNEL", "u")).code == Code.UNKNOWN_APP
    with pytest.raises(InvalidInput):
        await adm.admit(w.apps[0], "web", "tab\tuser")
    with pytest.raises(InvalidInput):
        await adm.admit(w.apps[0], "web", "")
    with pytest.raises(InvalidInput):
        await adm.admit(w.apps[0], "web", "u", "k" * 300)
    with pytest.raises(InvalidInput):
        await projection.grant(
            single, w.ws, reference="r", kind="funds", amount=-5, low_threshold=1
        )
    with pytest.raises(NotFound):
        await projection.grant(
            single, "nows1234", reference="r", kind="funds", amount=5, low_threshold=1
        )
    with pytest.raises(NotFound):
        await projection.grant(
            single,
            w.ws,
            reference="r2",
            kind="funds",
            amount=5,
            app_id=f"{w.ws}_zz99",
            low_threshold=1,
        )
    for bad in ("-5", "1e3", "NaN", "Infinity", "1,000", " 1", "", "0x10", "1.0000001"):
        with pytest.raises(InvalidAmount):
            parse_amount(bad)
    with pytest.raises(InvalidAmount):
        parse_amount("100.001", places=2)
    assert sorted(await single.keys("*")) == before
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD


async def test_survives_script_flush(single: RedisClient) -> None:
    _, _, w, adm = await admission(single, free=10 * USD)
    await adm.admit(w.apps[0], "web", "u1")
    await single.script_flush()
    assert (await adm.admit(w.apps[0], "web", "u2")).units == 1


async def test_redis_down_is_reported_distinctly_then_recovers(redis_server: RedisServer) -> None:
    if not redis_server.running:
        redis_server.start()
    # Killed, Redis refuses at once: the test needs no short timeout, and with 0.5 s the
    # calls before the kill and after the restart could time out on a busy machine.
    clock, cfg = Clock(), make_settings()
    c = connect(redis_server.url)
    try:
        w = await seed(c, cfg, clock, free=10 * USD)
        adm = admitter(c, cfg, clock)
        await adm.admit(w.apps[0], "web", "u1")
        redis_server.kill()
        with pytest.raises(MeteringUnavailable):
            await adm.admit(w.apps[0], "web", "u2")
        redis_server.start()
        # Data is gone (no persistence): the reconnected client sees an unknown app, not an error.
        assert (await adm.admit(w.apps[0], "web", "u3")).code == Code.UNKNOWN_APP
    finally:
        await c.aclose()
        if not redis_server.running:
            redis_server.start()


async def test_keys_of_a_workspace_share_one_cluster_slot() -> None:
    from redis.crc import key_slot

    ws = "wabc123"
    made = [
        keys.ws_key(ws),
        keys.app_key(ws, f"{ws}_a1"),
        keys.sessions_key(ws, 900),
        keys.idem_key(ws, f"{ws}_a1", "k"),
        keys.agg_key(ws, 60),
        keys.events_key(ws),
        *keys.rate_keys(ws, f"{ws}_a1"),
        keys.apps_key(ws),
    ]
    assert len({key_slot(k.encode()) for k in made}) == 1


# --- fail-open settlement -------------------------------------------------------------------


async def test_settlement_charges_as_of_when_served_and_ignores_rate_limits(
    single: RedisClient,
) -> None:
    clock, _, w, adm = await admission(single, free=10 * USD, rate_per_minute=2)
    served = clock.now
    owed = [(served + minute * 60, "u1") for minute in (0, 10, 20)]  # one conversation
    owed += [(served, f"other{i}") for i in range(4)]  # a burst over the minute limit
    clock.advance(3600)  # Redis came back an hour later
    ds = [
        await adm.settle(w.apps[0], "web", user, "", kind="m", token=f"t{i}", at=at)
        for i, (at, user) in enumerate(owed)
    ]
    assert [d.reason for d in ds] == [None] * 7
    assert [d.units for d in ds] == [1, 0, 1, 1, 1, 1, 1]  # 20 min of talk = 2 sessions
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD - 6 * PRICE
    # The rate windows did not count them: two fresh messages still fit in this minute.
    assert [(await adm.admit(w.apps[0], "web", f"n{i}")).reason for i in range(2)] == [None] * 2


async def test_a_settlement_is_charged_whatever_the_app_s_settings_now(
    single: RedisClient,
) -> None:
    """A tenant suspending its app, or denying it the free credits, after a fail-open
    outage served its messages does not cancel their charges (they were served)."""
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, free=10 * USD, products=("agent", "agent"))
    adm = admitter(single, cfg, clock)
    served = clock.now
    clock.advance(60)
    app_a, app_b = w.apps
    await single.hset(keys.app_key(w.ws, app_a), "suspended", 1)
    await single.hset(keys.app_key(w.ws, app_b), "use_free", 0)
    ds = [
        await adm.settle(app, "web", "u", "", kind="m", token=f"t{app}{i}", at=served)
        for app in w.apps
        for i in range(3)
    ]
    assert [(d.reason, d.units, d.free, d.owed) for d in ds] == [(None, 1, 20_000, 0)] * 6
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD - 6 * 20_000
    # Fresh messages still obey the settings.
    assert (await adm.admit(app_a, "web", "x")).reason == "app_suspended"
    assert (await adm.admit(app_b, "web", "x")).reason == "credits_exhausted"


async def test_a_settlement_the_balances_cannot_pay_is_owed_below_zero(
    single: RedisClient,
) -> None:
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, pool=30_000, products=("agent",))
    adm = admitter(single, cfg, clock)
    ds = [
        await adm.settle(w.apps[0], "web", "u", "", kind="m", token=f"t{i}", at=clock.now)
        for i in range(3)
    ]
    assert [(d.reason, d.pool, d.owed) for d in ds] == [
        (None, 20_000, 0),
        (None, 20_000, 10_000),
        (None, 20_000, 20_000),
    ]
    assert (await projection.read_balances(single, w.ws)).pool == 30_000 - 3 * 20_000
    assert (await agg_totals(single, w.ws))["p"] == 3 * 20_000
    assert (await adm.admit(w.apps[0], "web", "x")).reason == "credits_exhausted"


async def test_a_replayed_settlement_reports_nothing_owed(single: RedisClient) -> None:
    """Documented limit (README, fail mode open): a settlement replayed (its answer lost)
    finds its charge record, which keeps the amounts but not the owed part: the same
    charge, nothing taken again, 0 owed (missing from the settled-on-credit counter)."""
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, pool=10_000, products=("agent",))
    adm = admitter(single, cfg, clock)
    first = await adm.settle(w.apps[0], "web", "u", "", kind="m", token="t1", at=clock.now)
    again = await adm.settle(w.apps[0], "web", "u", "", kind="m", token="t1", at=clock.now)
    assert (first.pool, first.owed) == (20_000, 10_000)
    assert (again.pool, again.owed) == (20_000, 0)
    assert (await projection.read_balances(single, w.ws)).pool == -10_000


async def test_an_owed_pool_blocks_as_much_of_an_app_s_own_funds_until_paid_back(
    single: RedisClient,
) -> None:
    """What README (fail mode open) and docs/design.md say of a settlement owed below
    zero: it counts against every app's credit, so a payment allocated to one app does
    not pay it and as much of that payment stays blocked; a payment to the pool covers
    it first, then the app's funds are usable in full."""
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, products=("agent", "agent"))
    adm = admitter(single, cfg, clock)
    a, b = w.apps
    owed = await adm.settle(a, "web", "u", "", kind="m", token="t1", at=clock.now)
    assert owed.owed == 20_000
    await projection.grant(single, w.ws, reference="pay-b", kind="funds", amount=100_000,
                           low_threshold=0, app_id=b)  # fmt: skip
    got = [(await adm.admit(b, "web", f"v{i}")).reason for i in range(5)]
    assert got == [None] * 4 + ["credits_exhausted"]
    bal = await projection.read_balances(single, w.ws)
    assert (bal.pool, bal.app[b]) == (-20_000, 20_000)  # 20 000 of b's own, blocked
    await projection.grant(single, w.ws, reference="pay-pool", kind="funds", amount=20_000,
                           low_threshold=0)  # fmt: skip
    assert (await projection.read_balances(single, w.ws)).pool == 0  # the debt paid first
    last = await adm.admit(b, "web", "v5")
    assert (last.reason, last.app) == (None, 20_000)


async def test_an_enterprise_settlement_counts_past_the_licence(single: RedisClient) -> None:
    clock, cfg = Clock(), make_settings()
    lic = {"agent": projection.Licence(usage_limit=1, per_minute=100, per_hour=1000)}
    w = await seed(single, cfg, clock, plan="enterprise", licences=lic, products=("agent",))
    adm = admitter(single, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "a")).admitted
    ds = [
        await adm.settle(w.apps[0], "web", "u", "", kind="m", token=f"t{i}", at=clock.now)
        for i in range(2)
    ]
    assert [(d.reason, d.invoiced) for d in ds] == [(None, 20_000)] * 2
    assert (await adm.admit(w.apps[0], "web", "x")).reason == "usage_limit_reached"


async def test_settling_a_charge_that_did_land_takes_nothing_more(single: RedisClient) -> None:
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, free=10 * USD, products=("agent",))
    adm = admitter(single, cfg, clock)
    landed = await adm.admit(w.apps[0], "web", "u", token="tok-1")  # answer lost in transit
    again = await adm.settle(w.apps[0], "web", "u", "", kind="m", token="tok-1", at=clock.now)
    # The settlement learns the decision that landed; nothing is debited a second time.
    assert again[:8] == landed[:8]
    assert (await agg_totals(single, w.ws))["n"] == 1
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD - 20_000


async def test_a_gateway_clock_slightly_behind_does_not_break_the_session(
    single: RedisClient,
) -> None:
    """Replicas stamp batches with their own clocks: time may step back a little."""
    clock, _, w, adm = await admission(single, free=10 * USD)
    first = await adm.admit(w.apps[0], "web", "u")
    clock.advance(-2)  # another replica, 2 s behind
    behind = await adm.admit(w.apps[0], "web", "u")
    clock.advance(5)
    after = await adm.admit(w.apps[0], "web", "u")
    assert (first.units, behind.units, after.units) == (1, 0, 0)
    assert first.bsid == behind.bsid == after.bsid


async def test_the_same_attempt_replayed_gets_its_original_decision(single: RedisClient) -> None:
    """A client retry of a call whose reply was lost is not a duplicate: still refundable."""
    clock, cfg = Clock(), make_settings()
    w = await seed(single, cfg, clock, free=10 * USD, products=("agent",))
    adm = admitter(single, cfg, clock)
    first = await adm.admit(w.apps[0], "web", "u", token="attempt-1")
    replay = await adm.admit(w.apps[0], "web", "u", token="attempt-1")
    assert first[:8] == replay[:8]
    assert not replay.duplicate
    assert await adm.refund(w.apps[0], replay)
    assert (await projection.read_balances(single, w.ws)).free == 10 * USD
    other = await adm.admit(w.apps[0], "web", "u", "k1", token="attempt-2")
    dup = await adm.admit(w.apps[0], "web", "u", "k1", token="attempt-3")  # a channel retry
    assert (other.units, dup.duplicate, dup.charged) == (1, True, 0)


async def test_a_replayed_session_opener_gets_its_charge_back_after_others(
    single: RedisClient,
) -> None:
    """The in-session short path never answers the retry of the call that paid the block.

    A retried call carries its original "now"; messages of the same session admitted in
    between (same or later stamp) must not turn the opener's replay into an uncharged
    in-session message, or its charge could no longer be refunded.
    """
    clock, _, w, adm = await admission(single, free=10 * USD)
    at = clock.now
    first = await adm.admit(w.apps[0], "web", "u", token="opener-1")
    same_ms = await adm.admit(w.apps[0], "web", "u")
    clock.advance(30)
    later = await adm.admit(w.apps[0], "web", "u")
    clock.now = at  # the lost reply's call, retried as it was sent
    replay = await adm.admit(w.apps[0], "web", "u", token="opener-1")
    assert (first.units, same_ms.units, later.units) == (1, 0, 0)
    assert replay[:8] == first[:8]
    assert not replay.duplicate
    assert replay.new_session
    clock.advance(60)
    inside = await adm.admit(w.apps[0], "web", "u", token="opener-2")
    assert (inside.units, inside.bsid, inside.new_session) == (0, first.bsid, False)
    assert (await agg_totals(single, w.ws))["m"] == 4  # the replay is the same message


async def test_keyed_messages_inside_a_session_are_still_redeliveries_once_seen(
    single: RedisClient,
) -> None:
    """The short path records a keyed in-session message: its redelivery is a duplicate,
    another message under the same key is refused, its own retry gets its decision."""
    clock, _, w, adm = await admission(single, free=10 * USD, idempotency_max_deliveries=2)
    opener = await adm.admit(w.apps[0], "slack", "U1", "ev-1", digest="aa")
    clock.advance(5)
    inside = await adm.admit(w.apps[0], "slack", "U1", "ev-2", token="try-1", digest="bb")
    replay = await adm.admit(w.apps[0], "slack", "U1", "ev-2", token="try-1", digest="bb")
    clock.advance(1)
    again = await adm.admit(w.apps[0], "slack", "U1", "ev-2", digest="bb")
    reused = await adm.admit(w.apps[0], "slack", "U1", "ev-2", digest="cc")
    assert (opener.units, inside.units, inside.bsid) == (1, 0, opener.bsid)
    assert inside[:10] == replay[:10]
    assert not inside.duplicate
    assert (again.duplicate, again.units, again.bsid) == (True, 0, opener.bsid)
    assert reused.code == Code.DUPLICATE_DELIVERY  # bound reached (2), and not the same body
    other_user = await adm.admit(w.apps[0], "slack", "U2", "ev-2")
    assert (other_user.units, other_user.duplicate) == (1, False)  # keys are per user


async def test_in_session_messages_obey_suspension_and_rate_limits(single: RedisClient) -> None:
    """The short path for paid sessions keeps the app's status and rolling windows."""
    clock, _, w, adm = await admission(single, free=10 * USD, rate_per_minute=3)
    codes = []
    for _ in range(4):
        codes.append((await adm.admit(w.apps[0], "web", "u")).code)
        clock.advance(1)
    assert codes == [0, 0, 0, Code.RATE_LIMITED]
    clock.advance(120)
    await projection.put_app(single, w.apps[0], product="automation", suspended=True)
    assert (await adm.admit(w.apps[0], "web", "u")).code == Code.APP_SUSPENDED


async def test_a_new_free_grant_lapses_expired_credits_first(single: RedisClient) -> None:
    clock, cfg = Clock(), make_settings(free_credit_validity_s=3600)
    w = await seed(single, cfg, clock, free=5 * USD)
    clock.advance(7200)  # expired, but no message has lapsed it yet
    expires = int((clock.now + 3600) * 1000)
    await projection.grant(
        single, w.ws, reference="free-2", kind="free", amount=1 * USD,
        low_threshold=cfg.low_balance_threshold, free_expires_ms=expires,
        now_ms=int(clock.now * 1000),
    )  # fmt: skip
    bal = await projection.read_balances(single, w.ws)
    assert (bal.free, bal.lapsed) == (1 * USD, 5 * USD)
    assert (await events(single, w.ws)).count("free_credits.expired") == 1
    ds = [await admitter(single, cfg, clock).admit(w.apps[0], "web", f"u{i}") for i in range(6)]
    assert [d.units for d in ds] == [1] * 5 + [0]  # only the new $1 is spendable
