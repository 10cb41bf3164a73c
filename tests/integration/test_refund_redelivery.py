"""Refunds of a message delivered more than once (refund.lua): the charge of an idempotency
key stands while any delivery of it was or may still be served, and is given back when
the last of them fails. Real Redis, single and Cluster."""

from __future__ import annotations

from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision
from meter.admission.reservations import Sweeper
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.metering import Workspace, admission, agg_totals

PRICE = 200_000  # $0.20 per session, the standard catalog price
USD = 1_000_000
FREE = 10 * USD


async def charged(client: RedisClient, w: Workspace) -> int:
    return FREE - (await projection.read_balances(client, w.ws)).free


async def deliveries(adm: Admitter, app: str, key: str, n: int) -> list[Decision]:
    """The original and ``n - 1`` redeliveries of one message, all admitted."""
    ds = [await adm.admit(app, "web", "u", key, digest="abcd") for _ in range(n)]
    assert (ds[0].units, ds[0].duplicate) == (1, False)
    assert all(d.admitted and d.duplicate and d.units == 0 for d in ds[1:])
    return ds


async def test_a_served_redelivery_keeps_the_charge_when_the_original_fails(
    client: RedisClient,
) -> None:
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, _ = await deliveries(adm, app, "k1", 2)  # the redelivery was served
    assert not await adm.refund(app, first)
    assert not await adm.refund(app, first)  # a failure counts once
    assert await charged(client, w) == PRICE
    # Still the same message: a third delivery is a duplicate, charged nothing.
    again = await adm.admit(app, "web", "u", "k1", digest="abcd")
    assert again.duplicate
    assert await charged(client, w) == PRICE
    totals = await agg_totals(client, w.ws)
    assert (totals["n"], totals["x"]) == (1, 0)


async def test_the_last_delivery_to_fail_refunds_in_either_order(client: RedisClient) -> None:
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, dup = await deliveries(adm, app, "k1", 2)
    assert not await adm.refund(app, first)  # the redelivery may still be served
    assert await charged(client, w) == PRICE
    assert await adm.refund(app, dup)
    assert await charged(client, w) == 0
    assert not await adm.refund(app, dup)  # idempotent
    assert not await adm.refund(app, first)

    first, dup = await deliveries(adm, app, "k2", 2)
    assert not await adm.refund(app, dup)  # the original may still be served
    assert await charged(client, w) == PRICE
    assert await adm.refund(app, first)
    assert await charged(client, w) == 0
    totals = await agg_totals(client, w.ws)
    assert (totals["n"], totals["f"], totals["x"]) == (0, 0, 2)
    # Refunded: the key's next delivery is a new message, charged afresh.
    assert (await adm.admit(app, "web", "u", "k2", digest="abcd")).units == 1
    assert await charged(client, w) == PRICE


async def test_failures_count_once_each_and_only_for_deliveries_of_the_record(
    client: RedisClient,
) -> None:
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, dup1, dup2 = await deliveries(adm, app, "k1", 3)
    # An attempt that never reached Redis (an ambiguous error) is no delivery of it.
    assert not await adm.void(app, first.rid, "not-a-delivery")
    assert not await adm.refund(app, dup1)
    assert not await adm.refund(app, dup1)
    assert not await adm.refund(app, first)
    assert await charged(client, w) == PRICE  # dup2 may be served
    assert await adm.refund(app, dup2)
    assert await charged(client, w) == 0


async def test_a_retried_redelivery_call_is_one_delivery(client: RedisClient) -> None:
    """A redelivery's call sent again (its reply was lost; or a fail-open debt settled with
    the same token) is the same delivery: one failure of it is its failure."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first = await adm.admit(app, "web", "u", "k1")
    dup = await adm.admit(app, "web", "u", "k1", token="retry.1")
    again = await adm.admit(app, "web", "u", "k1", token="retry.1")
    assert (first.units, dup.duplicate, again.duplicate) == (1, True, True)
    assert not await adm.refund(app, first)
    assert await charged(client, w) == PRICE
    assert await adm.refund(app, again)
    assert await charged(client, w) == 0


async def test_the_sweeper_keeps_the_charge_of_a_message_redelivered_and_served(
    client: RedisClient,
) -> None:
    """The original was charged but never forwarded (its gateway died); its redelivery
    went through another gateway and was served: the sweeper must not refund it."""
    clock, cfg, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, dup = await deliveries(adm, app, "k1", 2)
    sweeper = Sweeper(
        client,
        lambda: _list(w.ws),
        lambda a, r: adm.void(a, r, ""),
        clock=lambda: clock.now + cfg.refund_window_s + 1,
    )
    assert await sweeper.sweep_once() == 0
    assert await client.zcard(keys.reservations_key(w.ws)) == 0  # settled
    assert await charged(client, w) == PRICE
    # Then the redelivery fails too: no delivery was served.
    assert await adm.refund(app, dup)
    assert await charged(client, w) == 0
    assert not await adm.refund(app, first)


async def test_a_void_after_the_retry_of_an_ambiguous_admission_was_served(
    client: RedisClient,
) -> None:
    """The original's admission applied but its reply was lost (answered 503, voided
    later); the client's retry is a redelivery, served: the void leaves the charge."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, _ = await deliveries(adm, app, "k1", 2)
    assert not await adm.void(app, keys.record_id("web", "u", "k1", first.token), first.token)
    assert await charged(client, w) == PRICE


async def test_a_record_redelivered_before_the_list_existed_keeps_its_charge(
    client: RedisClient,
) -> None:
    """A record written before redeliveries were listed counts deliveries whose tokens are
    unknown: once redelivered, its charge stands."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, dup = await deliveries(adm, app, "k1", 2)
    ik = keys.idem_key(w.ws, app, first.rid)
    rec = (await client.get(ik)).decode()  # type: ignore[union-attr]
    if rec.count("\t") > 11:  # its 12 fields, then the list of deliveries
        rec = rec.rpartition("\t")[0]
    await client.set(ik, rec, keepttl=True)  # as the old admit.lua left it
    assert int(rec.split("\t")[1]) == 2  # two deliveries counted
    assert not await adm.refund(app, first)
    assert not await adm.refund(app, dup)
    assert await charged(client, w) == PRICE


async def _list(ws: str) -> list[str]:
    return [ws]


async def test_a_settled_debt_whose_lost_call_had_charged_is_not_swept(
    client: RedisClient,
) -> None:
    """Fail-open: the admission applied but its reply was lost, so the message was served
    as a debt and settled later with the same token (the same attempt): served, so the
    reservation its call left is settled and the sweeper refunds nothing."""
    clock, cfg, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    for key in ("k1", ""):
        user = f"u{key}"
        lost = await adm.admit(app, "web", user, key)
        settled = await adm.settle(app, "web", user, key, kind="m", token=lost.token, at=clock.now)
        assert (settled.units, settled.duplicate) == (1, False)  # the same attempt
    sweeper = Sweeper(
        client,
        lambda: _list(w.ws),
        lambda a, r: adm.void(a, r, ""),
        clock=lambda: clock.now + cfg.refund_window_s + 1,
    )
    assert await sweeper.sweep_once() == 0
    assert await charged(client, w) == 2 * PRICE


async def test_a_settlement_replayed_after_the_refund_window_charges_nothing(
    client: RedisClient,
) -> None:
    """A host crash can lose a settlement's "settled" journal line; the next process
    replays it, maybe long after the refund window. Its record must still be there, for
    a settlement whose lost call had charged and for one whose call never reached Redis:
    it lives the idempotency window (it was the refund window, 3 minutes)."""
    clock, cfg, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    lost = await adm.admit(app, "web", "u1", "")  # charged; its reply was lost
    tokens = [lost.token, "t" * 32]  # the second call never reached Redis
    for user, token in zip(("u1", "u2"), tokens, strict=True):
        d = await adm.settle(app, "web", user, "", kind="m", token=token, at=clock.now)
        assert (d.units, d.duplicate) == (1, False)
    assert await charged(client, w) == 2 * PRICE
    window_ms = cfg.idempotency_ttl_s * 1000
    for token in tokens:
        ttl = await client.pttl(keys.idem_key(w.ws, app, keys.record_id("web", "", "", token)))
        assert window_ms - 60_000 < ttl <= window_ms, ttl
    for user, token in zip(("u1", "u2"), tokens, strict=True):  # the replay
        await adm.settle(app, "web", user, "", kind="m", token=token, at=clock.now)
    assert await charged(client, w) == 2 * PRICE


async def test_a_delivery_admitted_again_after_its_failure_counts_again(
    client: RedisClient,
) -> None:
    """A token whose failure was counted and that is admitted again (a debt settled after
    it) may be served: the charge stands until it fails again."""
    clock, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    first, dup = await deliveries(adm, app, "k1", 2)
    assert not await adm.refund(app, dup)
    again = await adm.settle(app, "web", "u", "k1", kind="m", token=dup.token, at=clock.now)
    assert again.duplicate
    assert not await adm.refund(app, first)
    assert await charged(client, w) == PRICE
    assert await adm.refund(app, again)
    assert await charged(client, w) == 0
