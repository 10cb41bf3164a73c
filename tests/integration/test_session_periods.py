"""Billing sessions and usage agree in every period, also when a block spans its boundary.

A conversation started Oct 31 23:40 pays its second block with a message on Nov 1 00:02;
that block begins (15 minutes into the conversation) at 23:55. The charge is November's
usage, so the session it paid is November's too: its start is when the paying message
was admitted, live from Redis and once flushed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.batches import SessionEntry
from meter.usage.export import export_stream
from meter.usage.flusher import Flusher
from meter.usage.live_sessions import sessions_page
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings

NOV1 = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
OCT1 = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
DEC1 = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
BLOCK_MS = 900_000
# (from, to, granularity) in s: the months, the days and the hours around the boundary
RANGES = [
    (OCT1, NOV1, "month"),
    (NOV1, DEC1, "month"),
    (NOV1 - 86_400, NOV1, "day"),
    (NOV1, NOV1 + 86_400, "day"),
    (NOV1 - 3600, NOV1, "hour"),
    (NOV1, NOV1 + 3600, "hour"),
]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


async def export(
    store: Store, kind: str, ws: str, lo: int, hi: int, gran: str
) -> list[dict[str, Any]]:
    out = b""
    async for chunk in export_stream(
        store, kind=kind, fmt="ndjson", from_ms=lo * 1000, to_ms=hi * 1000,
        granularity=gran, workspace=ws,
    ):  # fmt: skip
        out += chunk
    return [orjson.loads(x) for x in out.splitlines() if x]


async def test_a_block_paid_after_the_boundary_is_a_session_of_the_next_period(
    rclient: RedisClient, store: Store
) -> None:
    cfg = make_settings(flush_bucket_s=60, flush_grace_s=1, session_block_s=900, session_idle_s=900)
    clock = Clock(NOV1 - 20 * 60)  # Oct 31 23:40 UTC
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)
    assert (await adm.admit(w.apps[0], "web", "bob")).units == 1  # 23:40, block 1
    clock.advance(14 * 60)
    assert (await adm.admit(w.apps[0], "web", "bob")).units == 0  # 23:54, same block
    clock.advance(8 * 60)
    paid = await adm.admit(w.apps[0], "web", "bob")  # Nov 1 00:02: block 2 (23:55-00:10)
    assert paid.units == 1

    async def live(lo: int, hi: int) -> list[tuple[str, int, bool]]:
        page = await sessions_page(
            store, rclient, w.ws, lo * 1000, hi * 1000, app_id=None, app_ids=None,
            channel=None, cursor=None, limit=100, desc=False, block_ms=BLOCK_MS,
            idle_ms=900_000, now_ms=int(clock.now * 1000),
        )  # fmt: skip
        return [(x.row.id, x.row.start_ms, x.open) for x in page.items]

    clock.advance(3 * 60)  # 00:05: the block runs until 00:10
    assert await live(NOV1, DEC1) == [(paid.bsid, (NOV1 + 120) * 1000, True)]
    assert [s for s, _, _ in await live(OCT1, NOV1)] != [paid.bsid]
    clock.advance(6 * 60)  # 00:11: the block has ended, though it was paid at 00:02
    assert await live(NOV1, DEC1) == [(paid.bsid, (NOV1 + 120) * 1000, False)]

    clock.advance(3 * 3600)
    await Flusher(rclient, store, cfg, clock=clock).drain(force=False)
    for lo, hi, gran in RANGES:
        usage = await export(store, "usage", w.ws, lo, hi, gran)
        sessions = await export(store, "sessions", w.ws, lo, hi, gran)
        assert sum(r["units"] for r in usage) == len(sessions) == 1, (lo, hi, gran)
        assert [r["amount"] for r in usage] == [s["amount"] for s in sessions] == ["0.20"]
    [nov] = await export(store, "sessions", w.ws, NOV1, DEC1, "month")
    assert (nov["billing_session_id"], nov["start"]) == (paid.bsid, "2026-11-01T00:02:00Z")


def test_an_entry_of_an_earlier_version_starts_with_its_block() -> None:
    old = SessionEntry.parse(b"1000,1320000,2,s7,1,200000,automation")
    assert (old.product, old.opened, old.start(BLOCK_MS)) == ("automation", None, 901_000)
    new = SessionEntry.parse("1000,1320000,2,s7,1,200000,automation,1321000")
    assert (new.product, new.opened, new.start(BLOCK_MS)) == ("automation", 1_321_000, 1_321_000)
    assert new.block_start(BLOCK_MS) == 901_000
