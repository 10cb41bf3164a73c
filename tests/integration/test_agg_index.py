"""The aggregate index ``P:agi``: admit.lua adds a flush bucket to it only when its call
made the bucket's hash (the HINCRBY answered with the increment itself; see the
write-back of meter/lua/admit.lua), not on every call.

A write that comes late, into a bucket a flusher has already claimed (committed and
acked, or crashed before it committed), makes a fresh hash: it must be indexed again and
reach the store exactly once, whether the call counted admissions or only a refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.claims import ClaimCode, Claims
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, Expected, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


@pytest.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url("sqlite", request, tmp_path)):
        yield s


async def _a_full_minute(rclient: RedisClient, store: Store) -> tuple[Any, ...]:
    """One workspace, two apps; the rate-limited one's whole minute and one message of the
    other admitted by a gateway whose clock stays in one flush bucket."""
    cfg, clock = make_settings(fast_flush=True, rate_per_minute=3), Clock.past()
    w = await seed_ws(
        rclient, store, cfg, clock, products=["contact_center", "agent"], pool=100 * USD
    )
    limited, other = w.apps
    adm = admitter(rclient, cfg, clock)
    exp = Expected()
    for i in range(3):
        exp.add(await adm.admit(limited, "web", f"u{i}"))
    exp.add(await adm.admit(other, "web", "v0"))
    return cfg, clock, w, limited, other, adm, keys.agg_index_key(w.ws), exp


async def test_late_writes_into_a_flushed_bucket_are_indexed_and_flushed_once(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock, w, limited, other, adm, agi, exp = await _a_full_minute(rclient, store)
    flusher = Flusher(rclient, store, cfg, clock=Clock(clock.now + 60))  # it is closed there
    assert exp.refused == 0
    assert await rclient.zcard(agi) == 1
    await flusher.flush_once()
    assert await rclient.zcard(agi) == 0  # claimed (taken out of the index), acked

    # Late, a call whose only aggregate write is a refusal.
    late = await adm.admit(limited, "web", "u3")
    assert late.reason == "rate_limited"
    exp.add(late)
    assert await rclient.zcard(agi) == 1
    await flusher.flush_once()
    assert await rclient.zcard(agi) == 0
    # Late again, a call that only admits.
    d = await adm.admit(other, "web", "v1")
    assert d.admitted
    exp.add(d)
    assert await rclient.zcard(agi) == 1
    # A second admission into that fresh hash (it is indexed already: no ZADD needed).
    exp.add(await adm.admit(other, "web", "v2"))
    await flusher.flush_once()
    assert await rclient.zcard(agi) == 0

    rows = [r async for r in store.iter_usage(w.ws, 0, 2**62)]
    assert sum(r.messages for r in rows) == exp.messages == 6
    assert sum(r.units for r in rows) == exp.units
    assert sum(r.amount_pool for r in rows) == exp.pool > 0
    assert sum(r.refused.get("rate_limited", 0) for r in rows) == exp.refused == 1


async def test_late_writes_while_a_crashed_flushers_claim_is_outstanding(
    rclient: RedisClient, store: Store
) -> None:
    cfg, clock, w, limited, other, adm, agi, exp = await _a_full_minute(rclient, store)
    later = Clock(clock.now + 60)
    [b] = [int(x) for x in await rclient.zrange(agi, 0, -1)]
    # A flusher claims the closed bucket and dies before it commits anything.
    code, _ = await Claims(rclient, "crashed", 600_000, clock=later).claim(w.ws, "ag", b)
    assert code is ClaimCode.CLAIMED
    assert await rclient.zcard(agi) == 0

    late = await adm.admit(limited, "web", "u3")  # a refusal alone, into a fresh hash
    assert late.reason == "rate_limited"
    exp.add(late)
    assert await rclient.zcard(agi) == 1
    exp.add(await adm.admit(other, "web", "v1"))
    # The flusher comes back under its name: it re-takes its claim, then the fresh bucket.
    await Flusher(rclient, store, cfg, clock=later, owner="crashed").drain(force=False)
    assert await rclient.zcard(agi) == 0
    assert await rclient.hlen(keys.claims_key(w.ws)) == 0

    rows = [r async for r in store.iter_usage(w.ws, 0, 2**62)]
    assert sum(r.messages for r in rows) == exp.messages == 5
    assert sum(r.amount_pool for r in rows) == exp.pool > 0
    assert sum(r.refused.get("rate_limited", 0) for r in rows) == exp.refused == 1
