"""A refunded block opener leaves the conversation's state in Redis (its earlier blocks
stay paid) but no session: nothing of no message is flushed into the store, whether or
not the block is opened again in the same bucket (refund.lua, admit_rules.lua
write_session, batches.session_row). Real Redis and SQLite."""

from __future__ import annotations

from pathlib import Path

from config import Settings
from meter.redis_layer.client import RedisClient
from meter.usage.flusher import Flusher
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws
from tests.support.metering import admitter
from tests.support.settings import make_settings


async def closed_and_flushed(flusher: Flusher, cfg: Settings, clock: Clock) -> None:
    clock.advance(3 * cfg.session_block_s + cfg.session_idle_s + 5)
    await flusher.drain(force=False)


async def test_a_refunded_block_opener_flushes_no_empty_session(
    rclient: RedisClient, tmp_path: Path
) -> None:
    cfg, clock = make_settings(), Clock.past()
    async for store in opened_store(f"sqlite:///{tmp_path / 'cg.db'}"):
        w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
        adm, app, t0 = admitter(rclient, cfg, clock), w.apps[0], clock.now
        first = await adm.admit(app, "web", "u")  # block 1
        clock.now = t0 + 800
        await adm.admit(app, "web", "u")
        clock.now = t0 + 1000
        o = await adm.admit(app, "web", "u")  # opens block 2
        assert o.units == 1
        assert await adm.refund(app, o)  # bot down: the only message of block 2
        clock.now = t0 + 1010
        again = await adm.admit(app, "web", "u")  # block 2 opened again, same bucket
        assert again.units == 1
        clock.now = t0 + 1020
        v = await adm.admit(w.apps[0], "web", "v")  # another conversation: refunded alone
        assert await adm.refund(app, v)
        await closed_and_flushed(Flusher(rclient, store, cfg, clock=clock), cfg, clock)
        stored = await store.sessions(w.ws, 0, 2**62)
        rows = {r.id: (r.channel_user, r.messages, r.amount) for r in stored}
        assert rows == {first.bsid: ("u", 2, 200_000), again.bsid: ("u", 1, 200_000)}
        break


async def test_a_refunded_block_opener_never_opened_again_flushes_no_session(
    rclient: RedisClient, tmp_path: Path
) -> None:
    cfg, clock = make_settings(), Clock.past()
    async for store in opened_store(f"sqlite:///{tmp_path / 'cg.db'}"):
        w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=100 * USD)
        adm, app, t0 = admitter(rclient, cfg, clock), w.apps[0], clock.now
        first = await adm.admit(app, "web", "u")
        clock.now = t0 + 800
        await adm.admit(app, "web", "u")
        clock.now = t0 + 1000
        o = await adm.admit(app, "web", "u")  # opens block 2, then its bot fails
        assert (o.units, o.bsid != first.bsid) == (1, True)
        assert await adm.refund(app, o)
        await closed_and_flushed(Flusher(rclient, store, cfg, clock=clock), cfg, clock)
        rows = {r.id: (r.messages, r.amount) for r in await store.sessions(w.ws, 0, 2**62)}
        assert rows == {first.bsid: (2, 200_000)}
        break
