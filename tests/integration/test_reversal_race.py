"""A refund racing its payment's credit on PostgreSQL: taken exactly once either way.

Stripe may deliver a refund while the paid event (or an operator's credit by hand) is
being committed. The refund's transaction cannot see the credit's uncommitted claim,
and the credit's cannot see the refund kept for it: a placeholder claim orders the two
(:func:`meter.store.reversals._hold`). Each test holds one transaction open, starts the
other, commits the first once the second is observed waiting on it (``pg_stat_activity``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg
import pytest

from meter.store import LedgerEntry, Store, open_store
from meter.store.claims import Holder, claim
from meter.store.ledger import insert_ledger_entry
from meter.store.reversals import Reversal, _hold, settle_pending

pytestmark = pytest.mark.postgres
USD = 1_000_000
T = TypeVar("T")
_WAITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
REFUND = Reversal("pi_1", "refund", "ch_1", 40 * USD)
CREDIT = LedgerEntry("w1", "topup", 100 * USD, "funds:pi_1", 1)


async def _started_waiting(dsn: str, work: Awaitable[T]) -> asyncio.Task[T]:
    """``work`` started, once it waits on a lock (or finished)."""
    task = asyncio.ensure_future(work)
    watch = await asyncpg.connect(dsn)
    try:
        while not task.done() and not await watch.fetchval(_WAITING):  # noqa: ASYNC110
            await asyncio.sleep(0)
    finally:
        await watch.close()
    return task


async def _taken(store: Store) -> list[int]:
    return [e.amount for e in await store.reversals_of("pi_1")]


async def test_a_refund_during_the_credit_waits_for_it(pg_dsn: str) -> None:
    store = open_store(pg_dsn)
    try:
        await store.migrate()
        async with store.transaction() as c:  # the credit, committing
            await claim(c, ["pi_1"], Holder("w1", CREDIT.reference), 1)
            await insert_ledger_entry(c, CREDIT)
            refund = await _started_waiting(pg_dsn, store.reverse_payment(REFUND, 2))
            await settle_pending(c, ["pi_1"], 1)
        assert (await refund).result == "reversed"
        assert await _taken(store) == [-40 * USD]
    finally:
        await store.close()


async def test_a_credit_during_the_refund_takes_it(pg_dsn: str) -> None:
    store = open_store(pg_dsn)
    try:
        await store.migrate()
        async with store.transaction() as c:  # the refund, kept for a credit to come
            assert await _hold(c, REFUND, 1)
            credit = await _started_waiting(pg_dsn, store.credit_by_hand(CREDIT, "pi_1"))
        assert (await credit).created
        assert await _taken(store) == [-40 * USD]
        assert (await store.reverse_payment(REFUND, 3)).result == "already_reversed"
    finally:
        await store.close()
