"""Fail-open debts and voids (gateway/owed.py) at their edges: a damaged journal taken
over, a full void list, a debt forgiven before its turn in a settlement pass.

Counted on a real redis-server: every served message charged exactly once, one whose
bot failed not at all (or its charge voided).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway import owed as owed_module
from gateway.debts import Debt, Void, read_journal
from gateway.owed import Owed
from meter.admission.admitter import Admitter
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually
from tests.support.owed_kit import (
    POOL,
    PRICE,
    OwedWorld,
    forgiven_at_first_call,
    new_owed,
    owe_all,
    owe_rounds,
    owed_world,
    owing,
)

# A dead process's journal line of the right shape with a field of the wrong type
# ("APP": the app id, "AT": the clock's now): each, settled, raised out of the pass.
DAMAGED = [
    'D ["APP", 1, "u", "", "bad", "m", AT]',  # TypeError (channel)
    'D ["APP", "web", "u", 7, "bad", "m", AT]',  # TypeError (key)
    'D ["APP", "web", "u", "", "bad", "m", "AT"]',  # ValueError (at)
    "V [1, 2, 3]",  # TypeError (app id)
    'V ["APP", ["t:bad"], "bad"]',  # DataError: "redis unavailable" for good
]


@pytest.mark.parametrize("line", DAMAGED)
async def test_a_damaged_journal_line_does_not_stop_the_settling(
    rclient: RedisClient, redis_url: str, tmp_path: Path, line: str
) -> None:
    """A journal taken over lists, ahead of a good debt, a debt or void with a field of
    the wrong type (damaged, or another version's). Before: settling it raised a
    TypeError or ValueError out of the pass, which ended the settling task for the life
    of the process (or, for a void whose record id is a list, a DataError taken for
    Redis being away: every pass failed there, for good): the good debt and every one
    owed after it served free. Now the line is skipped as malformed, the rest settled."""
    world = await owed_world(rclient, redis_url, tmp_path)
    app, now = world.app, world.clock.now
    good = f'D ["{app}", "web", "good", "", "tok1", "m", {now}]'
    damaged = line.replace("APP", app).replace("AT", str(now))
    async with owing(world, state_dir=taken_over(tmp_path, [damaged, good])) as (_, owed):
        owed.recover()
        await world.settled(owed, POOL - PRICE)


def taken_over(tmp_path: Path, lines: list[str]) -> Path:
    """A state folder holding a dead process's journal of ``lines``."""
    state = tmp_path / "st"
    state.mkdir()
    (state / "owed-1-dead.log").write_text("".join(f"{line}\n" for line in lines))
    return state


@pytest.mark.parametrize(("app_id", "channel"), [("nope", "web"), ("APP", "Web!")])
async def test_a_debt_that_names_no_possible_app_is_not_kept_for_ever(
    rclient: RedisClient, redis_url: str, tmp_path: Path, app_id: str, channel: str
) -> None:
    """A journal taken over lists a debt whose app id or channel cannot exist (damaged,
    well typed). Before: settling it answered ``unknown_app`` (without asking Redis) and
    it was kept as an app Redis did not know yet: retried every half second for the life
    of the process, the journal never emptied (every later line kept). Now dropped,
    logged, as a debt of an invalid channel user is."""
    world = await owed_world(rclient, redis_url, tmp_path)
    app, now = world.app, world.clock.now
    lines = [
        f'D ["{app_id.replace("APP", app)}", "{channel}", "u", "", "bad", "m", {now}]',
        f'D ["{app}", "web", "good", "", "tok1", "m", {now}]',
    ]
    async with owing(world, state_dir=taken_over(tmp_path, lines)) as (_, owed):
        assert owed.recover() == 2
        assert await owed.settle()
        assert not owed
        assert owed._journal is not None
        assert owed._journal.size == 0
        assert await world.pool() == POOL - PRICE


async def test_a_debt_forgiven_before_its_turn_is_not_sent(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """Two debts in one chunk; the second one's bot fails while the first is being
    settled. Before: the pass settled the second all the same (charged, then voided if
    the void list had room: a settlement that timed out could land after its void and
    stand). Now it is not sent: one admission call, for the first."""
    world = await owed_world(rclient, redis_url, tmp_path)
    debts = world.debts(2)
    async with forgiven_at_first_call(world, debts[1], chunk=2) as (owed, calls):
        owe_all(owed, debts)
        assert await owed.settle()
        assert not owed
        assert sum(calls) == 1  # tok1 never reached Redis
        assert await world.pool() == POOL - PRICE


async def test_a_forgiven_debt_keeps_its_void_when_the_void_list_is_full(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """A message's admission reached Redis (charged) but its answer did not: served
    fail-open, owed with the attempt's token. Its bot fails while the void list is full.
    Before: the debt was dropped and its void with it ("void list full"): the charge
    stood for a message the bot failed. Now the void takes the debt's place."""
    world = await owed_world(rclient, redis_url, tmp_path)
    app = world.app
    async with owing(world, limit=1) as (adm, owed):
        dec = await adm.admit(app, "web", "u0", token="tok0")  # the lost answer
        assert dec.admitted
        assert await world.pool() == POOL - PRICE
        debt = world.debt("u0", "tok0")
        assert owed.owe(debt)
        owed.void_later(app, "t:other", "other")  # the void list is full
        owed.forgive(debt)
        await world.settled(owed, POOL)


@pytest.mark.parametrize("when", ["settled", "in_flight"])
async def test_a_debt_settled_without_its_key_is_voided_when_forgiven(
    rclient: RedisClient, redis_url: str, tmp_path: Path, when: str
) -> None:
    """A client reuses an idempotency key for another message during an outage: served
    fail-open, the debt is settled as a message of its own (``duplicate_delivery``:
    charged without the key). Its bot fails once it is settled, or while its settlement
    is on its way. Before: the void named the key's record, the other message's (its
    token no delivery of it: nothing voided), and the charge stood for a message the bot
    failed. Now the void names the record the charge went to."""
    world = await owed_world(rclient, redis_url, tmp_path)
    app = world.app
    debt = world.debt("u0", "tok1", key="k1", digest="bbbb")
    owed: Owed | None  # bound by owing() below, before any admit call
    calls: list[int] = []

    def on_batch(size: int) -> None:
        calls.append(size)
        if when == "in_flight" and len(calls) == 2:  # the keyed settlement is on its way
            assert owed is not None
            owed.forgive(debt)

    async with owing(world, on_batch=on_batch) as (adm, owed):
        assert (await adm.admit(app, "web", "u0", "k1", token="tok0", digest="aaaa")).admitted
        assert owed.owe(debt)
        assert await owed.settle()
        assert len(calls) == 3  # tok0; tok1 keyed, refused; tok1 without the key
        if when == "settled":  # charged twice, then its bot fails
            assert await world.pool() == POOL - 2 * PRICE
            owed.forgive(debt)
            assert await owed.settle()
        assert not owed
        assert await world.pool() == POOL - PRICE


async def test_the_void_of_a_debt_settled_without_its_key_is_journaled_at_once(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """As above, forgiven while its settlement is on its way, ahead of another debt in
    the chunk: the void of the record its charge went to is in the journal before the
    next debt is settled (a process killed while the chunk's later debts settle would
    lose it: the charge standing for a message the bot failed)."""
    world = await owed_world(rclient, redis_url, tmp_path)
    app = world.app
    debt = world.debt("u0", "tok1", key="k1", digest="bbbb")
    later = world.debt("u1", "tok2")
    owed: Owed | None  # bound by owing() below, before any admit call
    calls: list[int] = []
    seen: list[list[Void]] = []

    def on_batch(size: int) -> None:
        calls.append(size)
        assert owed is not None
        if len(calls) == 2:  # tok1's keyed settlement is on its way
            owed.forgive(debt)
        if len(calls) == 4:  # tok2's: read the journal a kill -9 now would leave
            assert owed._journal is not None
            seen.append(read_journal(owed._journal.path.read_text().splitlines())[1])

    async with owing(world, on_batch=on_batch, state_dir=tmp_path / "st") as (adm, owed):
        void = adm.void

        async def voided(app_id: str, rid: str, token: str) -> bool:
            assert owed is not None  # each void's journal
            assert owed._journal is not None
            seen.append(read_journal(owed._journal.path.read_text().splitlines())[1])
            return await void(app_id, rid, token)

        adm.void = voided  # type: ignore[method-assign]
        assert (await adm.admit(app, "web", "u0", "k1", token="tok0", digest="aaaa")).admitted
        assert owed.owe(debt)
        assert owed.owe(later)
        assert await owed.settle()
        assert len(calls) == 4
        # At tok2's settlement and at every void call until this one's: a kill -9 at any
        # of them leaves the void of the record the charge went to (before: the key's
        # record's void, applied first, wrote "v tok1", which dropped both).
        assert seen
        assert all(Void(app, "t:tok1", "tok1") in voids for voids in seen)
        assert not owed
        assert await world.pool() == POOL - 2 * PRICE


@asynccontextmanager
async def stuck_owed(world: OwedWorld, state: Path) -> AsyncIterator[tuple[Admitter, Owed, Debt]]:
    """:func:`owing` with its journal in ``state``, owing a debt that stays owed."""
    stuck = world.stuck()
    async with owing(world, state_dir=state) as (adm, owed):
        assert owed.owe(stuck)
        yield adm, owed, stuck


async def test_the_journal_is_compacted_while_a_debt_stays_owed(
    rclient: RedisClient, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A debt of an app Redis does not know stays owed (until it does); meanwhile
    outages come and go, their debts settled. Before: the journal was emptied only
    when nothing at all was owed, so it kept every line of every later outage for the
    life of the process (here 40 rounds of 25 debts: 76 KB for one debt owed).
    Now, past a bound, it is rewritten with what is owed, and a process taking it over
    finds exactly that."""
    monkeypatch.setattr(owed_module, "COMPACT_BYTES", 4096, raising=False)
    world = await owed_world(rclient, redis_url, tmp_path)
    state = tmp_path / "st"
    async with stuck_owed(world, state) as (adm, owed, stuck):
        await owe_rounds(owed, world, 40, stuck)
        journal = owed._journal
        assert journal is not None
        assert journal.size < 3 * 4096
        assert await world.pool() == POOL - 1000 * PRICE
        files = list(state.glob("owed-*.log"))
        assert files == [journal.path]
        assert await eventually(lambda: not owed._syncing)  # a running fsync holds the lock
        journal.close(remove=False)  # the process dies: its journal is taken over
        owed._journal = None
        heir = new_owed(adm, state_dir=state)
        assert heir.recover() == 1
        assert heir.debts == [stuck]
        await heir.close(0)


async def test_a_full_disk_does_not_stop_the_settling(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """The journal's disk fills up (its descriptor made /dev/full's: every write fails
    with ENOSPC) after two debts are owed. Before: the pass's first settled line raised
    OSError, taken for Redis being away: every pass failed there for as long as the disk
    was full, nothing settled (the debts, charged, never left the list; no void ever
    applied), and a bot failing then lost its void (the OSError raised out of forgive()).
    Now a failed settled or void line is logged, kept in memory only."""
    world = await owed_world(rclient, redis_url, tmp_path)
    debts = world.debts(2)
    async with owing(world, state_dir=tmp_path / "st") as (_, owed):
        journal = owed._journal
        assert journal is not None
        owe_all(owed, debts)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, journal._fd)
        os.close(full)
        await world.settled(owed, POOL - 2 * PRICE)
        owed.forgive(debts[0])  # its bot fails after its settlement
        await world.settled(owed, POOL - PRICE)


async def test_a_journal_that_cannot_be_rewritten_does_not_stop_the_settling(
    rclient: RedisClient, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the new journal cannot be made (its folder's path now names a
    file). Before (the rewrite as first written): the OSError ended the settling task.
    Now it is logged, the journal kept as it is, and settling goes on."""
    monkeypatch.setattr(owed_module, "COMPACT_BYTES", 1024, raising=False)
    world = await owed_world(rclient, redis_url, tmp_path)
    state = tmp_path / "st"
    async with stuck_owed(world, state) as (_, owed, stuck):
        state.rename(tmp_path / "moved")
        state.write_text("")
        await owe_rounds(owed, world, 2, stuck)
        assert await world.pool() == POOL - 50 * PRICE
