"""Owner notifications are never given up on (real receivers on loopback, SQLite and
PostgreSQL): after ``max_attempts`` failures an event is *overdue*, counted as such and
still retried at the backoff cap until delivered; saving the webhook makes it due at once.
Time is the test's clock, moved by hand; nothing waits on the wall clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import meter.store.postgres as pg
import meter.store.sqlite as sq
from gateway.webhooks import http_post
from meter.accounts.notifier import Notifier, lease_ms
from meter.store import OutboxEvent, Store, User, Workspace, open_store
from meter.store.schema import MIGRATIONS
from tests.support.clock import T0, Clock
from tests.support.receiver import Receiver

SECRET = "whsec-" + "o" * 26
WS = "wsoverdue1"
CAP_S = 4.0  # reached by the third retry
MAX_ATTEMPTS = 3
# The bound of a delivery's HTTP request to the test's receiver, which answers at once:
# a bound for a hang (2 s, a busy machine could pass it and fail the attempt). The
# notifier's own timeout_s stays: it runs on the test's clock (leases, slow errors).
POST_HANG_S = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.migrate()
    await s.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
    await s.create_workspace(Workspace(WS, "Acme", "u0001", 0))
    yield s
    await s.close()


def notifier(store: Store, session: aiohttp.ClientSession, clock: Clock) -> Notifier:
    return Notifier(
        store,
        http_post(session, POST_HANG_S),
        clock=clock,
        max_attempts=MAX_ATTEMPTS,
        backoff_base_s=1.0,
        backoff_cap_s=CAP_S,
        timeout_s=2.0,
    )


async def fail_past_max_attempts(
    store: Store, rec: Receiver, n: Notifier, clock: Clock, extra: int = 0
) -> OutboxEvent:
    """Enqueue one event; the receiver answers 503 to its first ``MAX_ATTEMPTS + extra``
    attempts, each made when the event is due. Returns the event after those attempts,
    the clock at its next attempt."""
    ev = OutboxEvent(WS, f"{WS}:e1", "funds.added", {"id": "e1"}, int(T0 * 1000))
    await store.enqueue(ev)
    rec.fail, rec.fail_with = MAX_ATTEMPTS + extra, 503
    for _ in range(MAX_ATTEMPTS + extra):
        assert await n.deliver_due() == 0
        got = await store.get_event(ev.event_id)
        assert got is not None
        assert got.next_attempt_at is not None  # never given up on
        assert got.next_attempt_at - clock.now * 1000 <= CAP_S * 1000
        clock.now = got.next_attempt_at / 1000
    got = await store.get_event(ev.event_id)
    assert got is not None
    return got


async def test_an_overdue_event_is_counted_and_retried_at_the_cap_until_delivered(
    store: Store,
    rec: Receiver,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    await store.set_webhook(WS, rec.url + "?token=tok-in-the-url", SECRET)
    n = notifier(store, session, clock)
    ev = await fail_past_max_attempts(store, rec, n, clock, extra=2)
    assert ev.attempts == MAX_ATTEMPTS + 2
    assert ev.delivered_at is None
    assert ev.next_attempt_at is not None  # still scheduled: never given up on
    assert await store.due_events(ev.next_attempt_at - 1) == []  # waits for its retry
    assert await store.pending_events() == 1
    assert await store.overdue_events(MAX_ATTEMPTS) == 1
    assert await store.overdue_events(MAX_ATTEMPTS + 3) == 0
    warned = [r.getMessage() for r in caplog.records if "overdue" in r.getMessage()]
    assert warned == [  # at each overdue failure, naming the workspace, the origin only
        f"webhooks: workspace {WS}: 1 overdue notification(s) failed again at "
        f"{rec.url.rsplit('/', 1)[0]} (the oldest {WS}:e1, {attempts} attempts); "
        f"retried every {CAP_S:g} s until delivered"
        for attempts in range(MAX_ATTEMPTS, MAX_ATTEMPTS + 3)
    ]
    assert all("tok-in-the-url" not in r.getMessage() for r in caplog.records)
    assert await n.deliver_due() == 1  # retried when due; the receiver answers again
    assert len(rec.got) == MAX_ATTEMPTS + 3
    assert await store.pending_events() == 0
    assert await store.overdue_events(MAX_ATTEMPTS) == 0


async def test_saving_the_webhook_makes_an_overdue_event_due_at_once(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    n = notifier(store, session, clock)
    ev = await fail_past_max_attempts(store, rec, n, clock)
    assert ev.attempts == MAX_ATTEMPTS
    clock.advance(-1)  # before its retry at the cap
    assert await n.deliver_due() == 0
    await store.set_webhook(WS, rec.url, SECRET)  # no threshold given: not woken
    assert await n.deliver_due() == 0
    await store.set_webhook(WS, rec.url, SECRET, overdue=MAX_ATTEMPTS)  # PUT /webhook
    assert await n.deliver_due() == 1
    delivered = await store.get_event(ev.event_id)
    assert delivered is not None
    assert delivered.delivered_at is not None
    assert delivered.last_error is None
    assert len(rec.valid(SECRET)) == MAX_ATTEMPTS + 1


async def test_the_backoff_of_a_long_overdue_event_stays_at_the_cap() -> None:
    n = Notifier(None, None, backoff_cap_s=CAP_S)  # type: ignore[arg-type]
    for attempts in (100, 1025, 100_000):  # 2.0 ** 1024 overflows a float
        assert 0.75 * CAP_S * 1000 <= n.backoff_ms(attempts) <= CAP_S * 1000


async def test_events_an_earlier_version_gave_up_on_are_retried_after_the_upgrade(
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    rec: Receiver,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    s = open_store(url)
    try:
        with monkeypatch.context() as m:
            before = tuple(step for step in MIGRATIONS if step.version < 20)
            m.setattr(pg, "MIGRATIONS", before)
            m.setattr(sq, "MIGRATIONS", before)
            await s.migrate()
        await s.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
        await s.create_workspace(Workspace(WS, "Acme", "u0001", 0))
        await s.set_webhook(WS, rec.url, SECRET)
        await s.enqueue(OutboxEvent(WS, f"{WS}:old", "app.inactive", {}, 1))
        async with s.connection() as c:  # as the earlier version left it: given up on
            await c.execute("UPDATE outbox SET attempts = 12, next_attempt_at = NULL")
        assert await s.migrate() == [step.version for step in MIGRATIONS if step.version >= 20]
        assert await s.pending_events() == 1
        clock = Clock()
        n = notifier(s, session, clock)
        rec.fail, rec.fail_with = 1, 503
        assert await n.deliver_due() == 0
        # past max_attempts already: the warning names the workspace at this retry too
        assert [r.getMessage() for r in caplog.records if WS in r.getMessage()] == [
            f"webhooks: workspace {WS}: 1 overdue notification(s) failed again at "
            f"{rec.url.rsplit('/', 1)[0]} (the oldest {WS}:old, 13 attempts); "
            f"retried every {CAP_S:g} s until delivered"
        ]
        clock.advance(CAP_S)
        assert await n.deliver_due() == 1
        assert [r.json["id"] for r in rec.got] == [f"{WS}:old", f"{WS}:old"]
    finally:
        await s.close()


async def test_saving_the_webhook_leaves_overdue_events_a_notifier_has_claimed(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    """PUT /webhook made every overdue event due at once, those another notifier had just
    claimed (and was sending) too: a second notifier sent the claimed batch again."""
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    n = notifier(store, session, clock)
    ev = await fail_past_max_attempts(store, rec, n, clock)
    other = OutboxEvent(WS, f"{WS}:e2", "funds.added", {"id": "e2"}, int(T0 * 1000) + 1)
    await store.enqueue(other)
    got = await store.get_event(other.event_id)
    assert got is not None
    assert got.id is not None
    for _ in range(MAX_ATTEMPTS):  # overdue too, its next attempt an hour away
        await store.mark_failed(got.id, "HTTP 503", int((clock.now + 3600) * 1000))
    now = int(clock.now * 1000)
    lease = lease_ms(2.0)
    claimed = await store.due_events(now, 10, lease_ms=lease)  # notifier A claims e1
    assert [e.event_id for e in claimed] == [ev.event_id]
    await store.set_webhook(WS, rec.url, SECRET, overdue=MAX_ATTEMPTS, lease_end_ms=now + lease)
    # notifier B finds e2 (overdue, not claimed) due at once, and not e1 (A's)
    assert [e.event_id for e in await store.due_events(now, 10)] == [other.event_id]
