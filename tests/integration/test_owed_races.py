"""Fail-open debts (gateway/owed.py) changed while a settlement pass is under way.

A message served while Redis was away is owed; its bot call may still be running when
Redis answers again and the settlement pass begins. A bot that fails then forgives the
debt (:meth:`Owed.forgive`) in the middle of the pass. Counted on a real redis-server:
every other served message is charged exactly once, the forgiven one not at all.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.debts import Debt, read_journal
from gateway.metrics import Metrics
from gateway.owed import Owed
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import seed
from tests.support.settings import make_settings

PRICE = 10_000  # contact_center: a request unit
POOL = 1_000_000


async def test_a_debt_forgiven_during_a_settlement_pass_loses_no_other_debt(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """Three served messages owed, settled two per chunk; the first one's bot fails
    while the pass settles it. Before: the pass then deleted the chunk's length from the
    front of the list, which had lost the forgiven debt meanwhile: the third debt went
    with it, never charged (its journal emptied with the list): a message served free."""
    clock, cfg = Clock(), make_settings(redis_url, tmp_path, fail_mode="open")
    w = await seed(rclient, cfg, clock, pool=POOL, products=("contact_center",))
    app = w.apps[0]
    debts = [Debt(app, "web", f"u{i}", "", f"tok{i}", "m", clock.now) for i in range(3)]
    owed: Owed | None = None
    calls: list[int] = []

    def on_batch(size: int) -> None:
        calls.append(size)
        if len(calls) == 1:  # the first debt's settlement is on its way to Redis
            assert owed is not None
            owed.forgive(debts[0])

    adm = Admitter(rclient, cfg, clock=clock, on_batch=on_batch)
    owed = Owed(adm, Metrics(CollectorRegistry()), timeout=30.0, chunk=2)
    try:
        for d in debts:
            assert owed.owe(d)
        assert await owed.settle()
        assert calls  # the pass did meet the forgiveness
        assert not owed  # nothing left owed, no void left pending
        pool = (await projection.read_balances(rclient, w.ws)).pool
        # u1 and u2 charged once each; u0 charged and voided (its bot failed).
        assert pool == POOL - 2 * PRICE
    finally:
        await owed.close(0)
        await adm.close()


async def test_a_debt_that_can_never_be_settled_does_not_stop_the_others(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """A journal taken over (another version's, or damaged) lists a debt whose channel
    user no admission accepts (a tab inside), ahead of a good one. Before: its settlement
    raised InvalidChannelUser out of the pass, which ended the settling task for the
    life of the process: every debt behind it stayed unsettled, served free. Now it is
    dropped (logged), the others settled."""
    clock, cfg = Clock(), make_settings(redis_url, tmp_path, fail_mode="open")
    w = await seed(rclient, cfg, clock, pool=POOL, products=("contact_center",))
    app = w.apps[0]
    adm = Admitter(rclient, cfg, clock=clock)
    owed = Owed(adm, Metrics(CollectorRegistry()), timeout=30.0)
    try:
        assert owed.owe(Debt(app, "web", "bad\tuser", "", "tok0", "m", clock.now))
        assert owed.owe(Debt(app, "web", "good", "", "tok1", "m", clock.now))
        assert await owed.settle()
        assert not owed
        assert (await projection.read_balances(rclient, w.ws)).pool == POOL - PRICE
    finally:
        await owed.close(0)
        await adm.close()


async def test_a_forgiven_debt_is_journaled_settled_and_voided_in_one_write(
    rclient: RedisClient, redis_url: str, tmp_path: Path
) -> None:
    """A served message whose bot failed is forgiven: its debt settled and its charge (if
    any landed) voided. A process killed at any write of its journal leaves the debt or
    the void owed, never neither. Before: the ``s`` line and the ``V`` line were two
    writes, and a kill between them left a charge that landed standing for a message the
    bot failed (its void lost). Every write boundary is checked by a journal reader."""
    clock, cfg = Clock(), make_settings(redis_url, tmp_path, fail_mode="open")
    adm = Admitter(rclient, cfg, clock=clock)
    owed = Owed(adm, Metrics(CollectorRegistry()), timeout=30.0, state_dir=tmp_path / "st")
    journal = owed._journal
    assert journal is not None
    written: list[int] = []
    append_all = journal.append_all

    def counted(lines: list[str]) -> None:
        append_all(lines)
        written.append(journal.size)

    journal.append_all = counted  # type: ignore[method-assign]
    try:
        debt = Debt("w1_app1", "web", "u", "k", "tok0", "m", clock.now)
        assert owed.owe(debt)
        owed.forgive(debt)
        data = journal.path.read_bytes()
        assert written[-1] == len(data)
        for end in written:
            debts, voids = read_journal(data[:end].decode().splitlines())
            assert [d.token for d in debts] + [v.token for v in voids] == ["tok0"], end
    finally:
        await owed.close(0)
        await adm.close()
