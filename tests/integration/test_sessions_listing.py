"""Every session of a range, as the streamed CSV reads it, is what the pages list.

:func:`every_session` reads Redis once and the store page by page; the sessions it yields,
stored, live, and both (an open session a forced flush copied), in either order, are the
pages of :func:`sessions_page` one after another: each session once, in order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.flusher import Flusher
from meter.usage.live_sessions import Listed, every_session, sessions_page
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        yield s


def key(x: Listed) -> tuple[str, int, int, bool]:
    return x.row.id, x.row.start_ms, x.row.amount, x.open


@pytest.mark.parametrize("desc", [False, True])
async def test_every_session_is_the_pages_one_after_another(
    desc: bool, rclient: RedisClient, store: Store
) -> None:
    cfg = make_settings(flush_bucket_s=60, flush_grace_s=1)
    clock = Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
    adm = admitter(rclient, cfg, clock)

    async def talk(users: range) -> None:
        for i in users:
            assert (await adm.admit(w.apps[0], "web", f"u{i}")).units == 1
            clock.advance(30)

    await talk(range(4))
    clock.advance(7200)
    await Flusher(rclient, store, cfg, clock=clock).drain(force=False)  # stored only
    await talk(range(4, 8))
    await Flusher(rclient, store, cfg, clock=clock).flush_once(force=True)  # both
    await talk(range(8, 11))  # live only
    lo, hi = int((clock.now - 86_400) * 1000), int((clock.now + 60) * 1000)
    opts = {
        "app_id": None, "app_ids": None, "channel": None, "desc": desc,
        "block_ms": int(cfg.session_block_s * 1000), "idle_ms": int(cfg.session_idle_s * 1000),
        "now_ms": int(clock.now * 1000),
    }  # fmt: skip
    paged: list[Listed] = []
    cursor = None
    while True:
        page = await sessions_page(store, rclient, w.ws, lo, hi, cursor=cursor, limit=3, **opts)
        paged += page.items
        if (cursor := page.next_cursor) is None:
            break
    streamed = [x async for p in every_session(store, rclient, w.ws, lo, hi, page=3, **opts)
                for x in p]  # fmt: skip
    assert [key(x) for x in streamed] == [key(x) for x in paged]
    assert len({x.row.id for x in streamed}) == len(streamed) == 11
    assert sum(x.open for x in streamed) == 7  # the last 7 conversations go on
    both = await store.sessions(w.ws, lo, hi)
    assert len(both) == 8  # the first four, and four copied while open
