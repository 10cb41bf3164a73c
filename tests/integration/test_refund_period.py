"""A refund reverses a charge where it was counted (refund.lua, the "@<bucket>[:<period>]"
that admit_full.lua notes in the charge record): the enterprise usage of the charge's
billing period and the aggregates of its bucket, not the refund's. Records of the previous
version (no such note) are still refunded, in the refund's bucket and period. Real Redis."""

from __future__ import annotations

import calendar

from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import admission, admitter, seed
from tests.support.settings import make_settings

USD = 1_000_000


async def bucket_fields(client: RedisClient, ws: str) -> dict[int, dict[str, int]]:
    """Live aggregates: bucket -> metric -> sum over its fields."""
    out: dict[int, dict[str, int]] = {}
    for b in await client.zrange(keys.agg_index_key(ws), 0, -1):
        got: dict[str, int] = {}
        for f, v in (await client.hgetall(keys.agg_key(ws, int(b)))).items():
            metric = keys.agg_field_parts(f)[4]
            got[metric] = got.get(metric, 0) + int(v)
        out[int(b)] = got
    return out


async def test_enterprise_refund_across_the_period_boundary_reverses_january(
    rclient: RedisClient,
) -> None:
    """Charged at 23:59:50 on January 31st, refunded in February: January's usage and
    aggregates take it back, so February still serves exactly its limit."""
    clock = Clock(calendar.timegm((2027, 1, 31, 23, 59, 50, 0, 0, 0)))
    cfg = make_settings()
    lic = {"search": projection.Licence(usage_limit=2, per_minute=100, per_hour=1000)}
    w = await seed(rclient, cfg, clock, plan="enterprise", licences=lic, products=("search",))
    adm = admitter(rclient, cfg, clock)
    app = w.apps[0]
    jan = await adm.admit(app, "web", "jan-user")
    assert jan.invoiced > 0
    jan_bucket = int(clock.now) // cfg.flush_bucket_s * cfg.flush_bucket_s
    clock.advance(15)  # February 1st, 00:00:05
    feb = [await adm.admit(app, "web", f"feb-{i}") for i in range(2)]
    assert [d.code for d in feb] == [0, 0]
    assert await adm.refund(app, jan)  # the January message's bot failed
    third = await adm.admit(app, "web", "feb-2")
    assert third.reason == "usage_limit_reached"
    prefix = keys.ws_prefix(w.ws)
    assert await rclient.get(f"{prefix}:lu:search:202701") == b"0"
    assert await rclient.get(f"{prefix}:lu:search:202702") == b"2"
    aggs = await bucket_fields(rclient, w.ws)
    assert (aggs[jan_bucket]["n"], aggs[jan_bucket]["i"], aggs[jan_bucket]["x"]) == (0, 0, 1)
    feb_units = sum(a.get("n", 0) for b, a in aggs.items() if b != jan_bucket)
    assert feb_units == 2


async def test_a_refund_in_a_later_bucket_reverses_the_charge_s_bucket(
    rclient: RedisClient,
) -> None:
    clock, cfg, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    d = await adm.admit(app, "web", "u")
    charged_in = int(clock.now) // cfg.flush_bucket_s * cfg.flush_bucket_s
    clock.advance(cfg.flush_bucket_s + 1)
    assert await adm.refund(app, d)
    aggs = await bucket_fields(rclient, w.ws)
    assert set(aggs) == {charged_in}
    assert (aggs[charged_in]["n"], aggs[charged_in]["f"], aggs[charged_in]["x"]) == (0, 0, 1)


async def test_a_record_of_the_previous_version_is_refunded_where_the_refund_happens(
    rclient: RedisClient,
) -> None:
    """Rolling upgrade: a charge record without the "@" note (as the previous version
    wrote it) is refunded as before: in the refund's bucket (and period)."""
    clock, cfg, w, adm = await admission(rclient, free=100 * USD)
    app = w.apps[0]
    d = await adm.admit(app, "web", "u")
    ik = keys.idem_key(w.ws, app, d.rid)
    rec = (await rclient.get(ik)).decode()
    head, note = rec.rsplit("\t", 1)
    assert note.startswith("@")
    await rclient.set(ik, head, keepttl=True)
    clock.advance(cfg.flush_bucket_s + 1)
    refunded_in = int(clock.now) // cfg.flush_bucket_s * cfg.flush_bucket_s
    assert await adm.refund(app, d)
    assert (await projection.read_balances(rclient, w.ws)).free == 100 * USD
    aggs = await bucket_fields(rclient, w.ws)
    assert (aggs[refunded_in]["n"], aggs[refunded_in]["x"]) == (-1, 1)
