"""Owner notifications: signed, delivered once to a real HTTP receiver, retried with backoff."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.webhooks import http_post
from meter.accounts.notifier import Notifier
from meter.accounts.webhook_signing import SIGNATURE_HEADER, TIMED_SIGNATURE_HEADER, signature
from meter.store import OutboxEvent, Store, User, Workspace, open_store
from tests.support.clock import T0, Clock
from tests.support.receiver import Receiver

SECRET = "whsec-" + "k" * 26
WS = "wsnotify1"
# The bound of a delivery's HTTP request to the test's receiver, which answers at once:
# a bound for a hang (2 s, a busy machine could pass it and fail the attempt). The
# notifier's own timeout_s stays: it runs on the test's clock (leases, slow errors).
POST_HANG_S = 60.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path}/store.db")
    await s.migrate()
    await s.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
    await s.create_workspace(Workspace(WS, "Acme", "u0001", 0))
    yield s
    await s.close()


def notifier(store: Store, session: aiohttp.ClientSession, clock: Clock, **kw: float) -> Notifier:
    return Notifier(
        store, http_post(session, POST_HANG_S), clock=clock, backoff_base_s=1.0, timeout_s=2.0, **kw
    )  # type: ignore[arg-type]


async def enqueue(store: Store, event_id: str, kind: str, **payload: object) -> None:
    ev = OutboxEvent(WS, f"{WS}:{event_id}", kind, {"id": event_id, **payload}, int(T0 * 1000))
    await store.enqueue(ev)


async def test_delivered_once_with_a_valid_signature(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    await enqueue(store, "e1", "balance.low", balance=49_800_000, threshold=50_000_000)
    n = notifier(store, session, clock)
    assert await n.deliver_due() == 1
    assert await n.deliver_due() == 0
    clock.advance(3600)
    assert await n.deliver_due() == 0
    assert len(rec.got) == 1
    assert len(rec.valid(SECRET)) == 1
    got = rec.got[0]
    assert got.json["data"] == {"balance": "49.80", "threshold": "50.00"}
    assert got.headers["X-Creditgate-Event"] == "balance.low"
    assert got.headers["X-Creditgate-Delivery"] == f"{WS}:e1"
    assert not rec.valid("another-secret-entirely")
    stored = await store.get_event(f"{WS}:e1")
    assert stored is not None
    assert stored.delivered_at is not None
    assert stored.attempts == 1


async def test_failures_retry_with_exponential_backoff(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    await enqueue(store, "e2", "paid_balance.zero")
    n = notifier(store, session, clock)
    rec.fail = 3
    delays = []
    for _ in range(3):
        assert await n.deliver_due() == 0
        ev = await store.get_event(f"{WS}:e2")
        assert ev is not None
        assert ev.next_attempt_at is not None
        delays.append(ev.next_attempt_at - int(clock.now * 1000))
        assert await n.deliver_due() == 0  # not due yet
        clock.now = ev.next_attempt_at / 1000
    assert 750 <= delays[0] <= 1000
    assert 1500 <= delays[1] <= 2000
    assert 3000 <= delays[2] <= 4000
    assert await n.deliver_due() == 1
    ev = await store.get_event(f"{WS}:e2")
    assert ev is not None
    assert ev.attempts == 4
    assert ev.delivered_at is not None
    assert len(rec.got) == 4
    assert ev.last_error is None


async def test_overdue_after_max_attempts_and_survives_a_dead_receiver(
    store: Store, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    url = "http://127.0.0.1:9/nothing-listens?token=tok-in-the-url"
    await store.set_webhook(WS, url, SECRET)
    await enqueue(store, "e3", "app.inactive", app="x_y")
    n = notifier(store, session, clock, max_attempts=2)
    assert await n.deliver_due() == 0
    clock.advance(10)
    assert await n.deliver_due() == 0
    ev = await store.get_event(f"{WS}:e3")
    assert ev is not None
    assert ev.attempts == 2
    assert ev.next_attempt_at is not None  # never given up on
    assert ev.delivered_at is None
    assert ev.last_error
    clock.advance(86400)
    assert [e.event_id for e in await store.due_events(int(clock.now * 1000))] == [f"{WS}:e3"]
    # the operator's log names where, never the owner's path or token
    overdue = [r.getMessage() for r in caplog.records if "overdue" in r.getMessage()]
    assert overdue == [
        f"webhooks: workspace {WS}: 1 overdue notification(s) failed again at "
        f"http://127.0.0.1:9 (the oldest {WS}:e3, 2 attempts); "
        "retried every 3600 s until delivered"
    ]
    for r in caplog.records:
        assert "tok-in-the-url" not in r.getMessage()
        assert "nothing-listens" not in r.getMessage()


async def test_events_wait_for_a_webhook_to_be_configured(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    await enqueue(store, "e4", "free_credits.exhausted")
    n = notifier(store, session, clock)
    assert await n.deliver_due() == 0
    await store.set_webhook(WS, rec.url, SECRET)
    clock.advance(3600)  # past the delivery lease
    assert await n.deliver_due() == 1
    assert rec.types() == ["free_credits.exhausted"]
    ev = await store.get_event(f"{WS}:e4")
    assert ev is not None
    assert ev.attempts == 1
    assert rec.got[0].headers[SIGNATURE_HEADER].startswith("sha256=")


async def test_every_attempt_carries_a_timed_signature_beside_the_body_one(
    store: Store, rec: Receiver, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    await store.set_webhook(WS, rec.url, SECRET)
    await enqueue(store, "e5", "balance.low", balance=1, threshold=2)
    n = notifier(store, session, clock)
    rec.fail = 1
    assert await n.deliver_due() == 0
    first_at = clock.now
    ev = await store.get_event(f"{WS}:e5")
    assert ev is not None
    assert ev.next_attempt_at is not None
    clock.now = ev.next_attempt_at / 1000 + 1.5  # the retry, a little later
    assert await n.deliver_due() == 1
    first, retry = rec.got
    # the body signature as before (same header, same value, for existing receivers)
    assert [r.headers[SIGNATURE_HEADER] for r in rec.got] == [signature(SECRET, first.body)] * 2
    # each attempt signed at its own time: a receiver at that time takes it
    stamps = [r.headers[TIMED_SIGNATURE_HEADER].split(",")[0] for r in rec.got]
    assert stamps == [f"t={int(first_at)}", f"t={int(clock.now)}"]
    assert rec.valid_at(SECRET, clock.now) == [first, retry]  # within 5 minutes
    assert rec.valid_at(SECRET, first_at + 301) == [retry]  # the first attempt's is stale
    # the same request replayed an hour later verifies by its body signature alone
    assert rec.valid_at(SECRET, clock.now + 3600) == []
    assert rec.valid(SECRET) == [first, retry]
    assert first.headers["X-Creditgate-Delivery"] == retry.headers["X-Creditgate-Delivery"]
