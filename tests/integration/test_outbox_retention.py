"""Delivered owner notifications are reduced to tombstones after the retention time, a
bounded batch per round of the notifier; undelivered ones never are, and a forgotten
notification queued again is not sent again (real receiver on loopback, SQLite and
PostgreSQL). Time is the test's clock, moved by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import meter.store.postgres as pg
from gateway.webhooks import http_post
from meter.accounts.notifier import Notifier
from meter.store import OutboxEvent, Store, User, Workspace, open_store
from meter.store.outbox import FORGOTTEN
from meter.store.schema import MIGRATIONS
from tests.support.clock import T0, Clock
from tests.support.receiver import Receiver

SECRET = "whsec-" + "r" * 26
WS, BARE = "wsretain01", "wsretain02"
DAY_S = 86400.0
T0_MS = int(T0 * 1000)
# The bound of a delivery's HTTP request to the test's receiver, which answers at once:
# a bound for a hang (2 s, a busy machine could pass it and fail the attempt). The
# notifier's own timeout_s stays: it runs on the test's clock (leases, slow errors).
POST_HANG_S = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path}/store.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_dsn")
    s = open_store(url)
    await s.migrate()
    await s.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
    for ws in (WS, BARE):
        await s.create_workspace(Workspace(ws, ws, "u0001", 0))
    yield s
    await s.close()


async def ids(store: Store, ws: str) -> list[str]:
    """The workspace's events still kept whole (not tombstones)."""
    events = await store.list_events(ws)
    return sorted(e.event_id for e in events if e.delivered_at != FORGOTTEN)


async def until_idle(n: Notifier) -> int:
    """Rounds until every workspace's task has ended; how many events they delivered."""
    delivered = await n.deliver_due()
    while n.busy:
        delivered += await n.deliver_due()
    return delivered


async def test_delivered_events_are_forgotten_after_the_retention_time_in_batches(
    store: Store, rec: Receiver
) -> None:
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    for i in range(5):  # delivered now
        await store.enqueue(OutboxEvent(WS, f"{WS}:old{i}", "app.inactive", {}, T0_MS - 10 + i))
    await store.enqueue(OutboxEvent(BARE, f"{BARE}:never", "app.inactive", {}, T0_MS))
    async with aiohttp.ClientSession() as session:
        n = Notifier(
            store,
            http_post(session, POST_HANG_S),
            clock=clock,
            timeout_s=2.0,
            max_attempts=1,
            retention_s=30 * DAY_S,
            sweep_batch=2,
        )
        assert await until_idle(n) == 5
        assert len(await ids(store, WS)) == 5
        clock.advance(29 * DAY_S)
        await store.enqueue(OutboxEvent(WS, f"{WS}:new", "app.inactive", {}, int(clock.now) * 1000))
        assert await until_idle(n) == 1  # the sweep delivered nothing 29 days old
        assert len(await ids(store, WS)) == 6
        clock.advance(1 * DAY_S + 1)  # the first five are past 30 days, the new one not
        for rounds in range(1, 10):  # noqa: B007 (read after the loop)
            await until_idle(n)
            if len(await ids(store, WS)) == 1:
                break
        assert rounds == 3  # 2 + 2 + 1: a full batch sweeps again the next round
        assert await ids(store, WS) == [f"{WS}:new"]
        # the one never delivered (no webhook: parked for 30 days) is kept
        assert await ids(store, BARE) == [f"{BARE}:never"]
        assert await store.pending_events() == 1
        clock.advance(365 * DAY_S)
        await until_idle(n)
        assert await ids(store, WS) == []
        assert await ids(store, BARE) == [f"{BARE}:never"]


async def test_a_forgotten_notification_queued_again_is_not_sent_again(
    store: Store, rec: Receiver
) -> None:
    """A top-up retried, or a payment event redelivered, after the retention time queues
    its ``funds.added`` again under the same id: the tombstone keeps it a no-op."""
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    event = OutboxEvent(WS, f"{WS}:bank-1", "funds.added", {"amount": "100.00"}, T0_MS)
    assert await store.enqueue(event)
    async with aiohttp.ClientSession() as session:
        n = Notifier(store, http_post(session, POST_HANG_S), clock=clock, retention_s=30 * DAY_S)
        assert await until_idle(n) == 1
        assert not await store.enqueue(event)  # at once: a no-op, as before
        clock.advance(31 * DAY_S)
        await until_idle(n)  # the sweep
        assert await ids(store, WS) == []
        tomb = await store.get_event(event.event_id)
        assert tomb is not None
        assert tomb.payload == {}
        assert tomb.delivered_at == FORGOTTEN
        assert not await store.enqueue(event)  # 31 days on: still a no-op
        assert await store.pending_events() == 0
        assert await until_idle(n) == 0
    assert [r.json["id"] for r in rec.got] == [event.event_id]


@pytest.mark.postgres
async def test_migration_21_takes_the_index_built_beforehand_concurrently(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migration 21's plain CREATE INDEX holds outbox writes for the whole build (3M rows:
    an INSERT waited 4 s); a step runs in a transaction, so it cannot build CONCURRENTLY.
    The README has operators build it by hand first; the step then takes it as it is."""
    s = open_store(pg_dsn)
    try:
        with monkeypatch.context() as m:
            m.setattr(pg, "MIGRATIONS", tuple(st for st in MIGRATIONS if st.version < 21))
            await s.migrate()
        async with s.connection() as c:  # as README says, outside any transaction
            await c.execute(
                "CREATE INDEX CONCURRENTLY outbox_delivered ON outbox (delivered_at) "
                "WHERE delivered_at IS NOT NULL"
            )
        assert await s.migrate() == [21]
        async with s.connection() as c:
            valid = await c.fetchval(
                "SELECT i.indisvalid AS v FROM pg_index i JOIN pg_class c "
                "ON c.oid = i.indexrelid WHERE c.relname = 'outbox_delivered'"
            )
        assert valid is True
    finally:
        await s.close()
