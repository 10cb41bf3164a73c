"""Fail-open debts (gateway/owed.py) changed while a settlement pass is under way.

A message served while Redis was away is owed; its bot call may still be running when
Redis answers again and the settlement pass begins. A bot that fails then forgives the
debt (:meth:`Owed.forgive`) in the middle of the pass. Counted on a real redis-server:
every other served message is charged exactly once, the forgiven one not at all.
"""

from __future__ import annotations

from pathlib import Path

from gateway.debts import Debt, read_journal
from meter.redis_layer.client import RedisClient
from tests.support.owed_kit import POOL, PRICE, forgiven_at_first_call, owe_all, owed_world, owing


async def test_a_debt_forgiven_during_a_settlement_pass_loses_no_other_debt(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """Three served messages owed, settled two per chunk; the first one's bot fails
    while the pass settles it. Before: the pass then deleted the chunk's length from the
    front of the list, which had lost the forgiven debt meanwhile: the third debt went
    with it, never charged (its journal emptied with the list): a message served free."""
    world = await owed_world(rclient, redis_url, tmp_path)
    debts = world.debts(3)
    # Forgiven while the first debt's settlement is on its way to Redis.
    async with forgiven_at_first_call(world, debts[0], chunk=2) as (owed, calls):
        owe_all(owed, debts)
        assert await owed.settle()
        assert calls  # the pass did meet the forgiveness
        assert not owed  # nothing left owed, no void left pending
        pool = await world.pool()
        # u1 and u2 charged once each; u0 charged and voided (its bot failed).
        assert pool == POOL - 2 * PRICE


async def test_a_debt_that_can_never_be_settled_does_not_stop_the_others(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """A journal taken over (another version's, or damaged) lists a debt whose channel
    user no admission accepts (a tab inside), ahead of a good one. Before: its settlement
    raised InvalidChannelUser out of the pass, which ended the settling task for the
    life of the process: every debt behind it stayed unsettled, served free. Now it is
    dropped (logged), the others settled."""
    world = await owed_world(rclient, redis_url, tmp_path)
    async with owing(world) as (_, owed):
        assert owed.owe(world.debt("bad\tuser", "tok0"))
        assert owed.owe(world.debt("good", "tok1"))
        await world.settled(owed, POOL - PRICE)


async def test_a_forgiven_debt_is_journaled_settled_and_voided_in_one_write(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """A served message whose bot failed is forgiven: its debt settled and its charge (if
    any landed) voided. A process killed at any write of its journal leaves the debt or
    the void owed, never neither. Before: the ``s`` line and the ``V`` line were two
    writes, and a kill between them left a charge that landed standing for a message the
    bot failed (its void lost). Every write boundary is checked by a journal reader."""
    world = await owed_world(rclient, redis_url, tmp_path)
    async with owing(world, state_dir=tmp_path / "st") as (_, owed):
        journal = owed._journal
        assert journal is not None
        written: list[int] = []
        append_all = journal.append_all

        def counted(lines: list[str]) -> None:
            append_all(lines)
            written.append(journal.size)

        journal.append_all = counted  # type: ignore[method-assign]
        debt = Debt("w1_app1", "web", "u", "k", "tok0", "m", world.clock.now)
        assert owed.owe(debt)
        owed.forgive(debt)
        data = journal.path.read_bytes()
        assert written[-1] == len(data)
        # What a reader finds at each write's end: the debt (the owe's write), then its
        # void in its place (the forgive's one write). Not only "one of them at each":
        # a forgive that wrote nothing passed that (the debt alone, at the only end).
        left = []
        for end in written:
            debts, voids = read_journal(data[:end].decode().splitlines())
            left.append(([d.token for d in debts], [v.token for v in voids]))
        assert left == [(["tok0"], []), ([], ["tok0"])]
        assert not owed.debts
        assert [v.token for v in owed.voids] == ["tok0"]
