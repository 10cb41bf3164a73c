"""Owner notifications are fair between workspaces (real receivers, SQLite and PostgreSQL).

One workspace's receiver that never answers, or its backlog of events, must not delay
another workspace's notifications; a workspace without a webhook keeps its events
without having them offered again and again. Progress is observed (what each receiver
got, what the outbox holds), never timed: ``asyncio.timeout`` below only stops a test
that would otherwise hang (as the unfair notifier did).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.webhooks import http_post
from meter.accounts.notifier import Notifier, Post
from meter.store import OutboxEvent, Store, User, Workspace, open_store
from tests.support.bot import serve
from tests.support.clock import T0, Clock
from tests.support.receiver import hanging_receiver, receiver

SECRET = "whsec-" + "f" * 26
SLOW, FAST, BARE = "wsslow0001", "wsfast0001", "wsbare0001"
T0_MS = int(T0 * 1000)
EPOCH = T0_MS - 100_000  # events are created before the test's now
GUARD_S = 30  # only ends a test that hangs; never reached when the notifier is fair
# The bound of a request to a receiver that answers: a bound for a hang (the notifier's
# own timeout_s is on the test's clock: leases, slow errors).
POST_HANG_S = 60.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path}/store.db"
    if request.param == "postgres":
        url = request.getfixturevalue("pg_dsn")
    s = open_store(url)
    await s.migrate()
    await s.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
    for ws in (SLOW, FAST, BARE):
        await s.create_workspace(Workspace(ws, ws, "u0001", 0))
    yield s
    await s.close()


async def enqueue(store: Store, ws: str, n: int, kind: str = "app.inactive", at: int = 0) -> None:
    """``n`` events of ``ws`` created ``at + i`` ms after ``EPOCH`` (so in this order)."""
    for i in range(n):
        payload = {"id": f"{kind}-{i}", "app": f"{ws}_app{i}"}
        await store.enqueue(OutboxEvent(ws, f"{ws}:{kind}:{i}", kind, payload, EPOCH + at + i))


def bounded(session: aiohttp.ClientSession, hanging_url: str) -> Post:
    """Posts to ``hanging_url`` (a receiver that never answers) timed out at 2 s, every
    other one bounded by :data:`POST_HANG_S`."""
    short, long = http_post(session, 2.0), http_post(session, POST_HANG_S)

    async def post(url: str, body: bytes, headers: Mapping[str, str], tenant: str) -> int:
        return await (short if url == hanging_url else long)(url, body, headers, tenant)

    return post


async def events(store: Store, ws: str) -> list[OutboxEvent]:
    return list(reversed(await store.list_events(ws, limit=1000)))  # oldest first


async def test_a_receiver_that_never_answers_delays_no_other_workspace(
    store: Store, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    async with hanging_receiver() as hang, receiver() as rec:
        await store.set_webhook(SLOW, hang.url, SECRET)
        await store.set_webhook(FAST, rec.url, SECRET)
        await enqueue(store, SLOW, 60)  # more than a round's batch, all older than FAST's
        await enqueue(store, FAST, 1, "funds.added", at=1_000)
        # No request to SLOW ends during this test: it never answers, nor times out.
        n = Notifier(store, http_post(session, 3600), timeout_s=3600, clock=clock)
        try:
            async with asyncio.timeout(GUARD_S):
                assert await n.deliver_due() == 1
                await hang.arrived.wait()
            assert rec.types() == ["funds.added"]
            assert len(rec.valid(SECRET)) == 1
            # SLOW: one request in flight (its events go one at a time), nothing delivered,
            # and no more of its events claimed while that request hangs.
            assert hang.connections == 1
            assert n.busy == 1
            assert [e.delivered_at for e in await events(store, SLOW)] == [None] * 60
            assert await n.deliver_due(wait_s=0) == 0
            assert hang.connections == 1
            unclaimed = await store.due_events(T0_MS, 100)
            assert [e.workspace_id for e in unclaimed] == [SLOW] * 50
            # FAST's next event is not held up either.
            await enqueue(store, FAST, 1, "balance.low", at=2_000)
            async with asyncio.timeout(GUARD_S):
                while len(rec.got) < 2:
                    await n.deliver_due()
            assert rec.types() == ["funds.added", "balance.low"]
            assert hang.connections == 1
        finally:
            await n.aclose(0)


async def test_after_a_timeout_the_workspace_waits_with_its_other_events(
    store: Store, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    async with hanging_receiver() as hang, receiver() as rec, receiver() as back:
        await store.set_webhook(SLOW, hang.url, SECRET)
        await store.set_webhook(FAST, rec.url, SECRET)
        await enqueue(store, SLOW, 30)
        await enqueue(store, FAST, 1, "funds.added", at=1_000)
        # A timeout SLOW's requests must reach, and the receivers that answer never do:
        # FAST's or BACK's answer could pass one bound for all on a busy machine (then
        # FAST not delivered, or BACK's event not due again on the frozen clock: a hang),
        # so only the requests to the receiver that never answers have it.
        n = Notifier(store, bounded(session, hang.url), timeout_s=2.0, clock=clock)
        async with asyncio.timeout(GUARD_S):
            delivered = await n.deliver_due()
            while n.busy:
                delivered += await n.deliver_due()
        assert delivered == 1
        assert rec.types() == ["funds.added"]
        # One request timed out; the other 29 events were not sent, no attempt counted,
        # and wait for the first one's retry.
        assert hang.connections == 1
        first, *rest = await events(store, SLOW)
        assert first.attempts == 1
        assert first.last_error
        assert first.next_attempt_at is not None
        assert first.next_attempt_at > T0_MS
        assert [(e.attempts, e.next_attempt_at) for e in rest] == [(0, first.next_attempt_at)] * 29
        assert await store.due_events(T0_MS, 100) == []
        assert await n.deliver_due() == 0
        assert hang.connections == 1

        # At the retry the oldest event is tried again, alone: still no answer.
        clock.now = first.next_attempt_at / 1000
        async with asyncio.timeout(GUARD_S):
            while await n.deliver_due() or n.busy:
                pass
        assert hang.connections == 2
        first, *rest = await events(store, SLOW)
        assert first.attempts == 2
        assert first.next_attempt_at is not None
        assert {(e.attempts, e.next_attempt_at) for e in rest} == {(0, first.next_attempt_at)}

        # A receiver that answers: everything arrives, once each, in order.
        await store.set_webhook(SLOW, back.url, SECRET)
        clock.now = first.next_attempt_at / 1000
        async with asyncio.timeout(GUARD_S):
            while len(back.got) < 30:
                await n.deliver_due()
        assert [r.json["id"] for r in back.got] == [f"{SLOW}:app.inactive:{i}" for i in range(30)]
        assert hang.connections == 2
        assert {e.attempts for e in (await events(store, SLOW))[1:]} == {1}


async def test_events_without_a_webhook_are_parked_not_offered_again(
    store: Store, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    async with receiver() as rec:
        await enqueue(store, BARE, 120)
        n = Notifier(store, http_post(session, POST_HANG_S), timeout_s=2.0, clock=clock)
        async with asyncio.timeout(GUARD_S):
            assert await n.deliver_due() == 0  # returns once the workspace's task ended
        # Kept, all of them, but not due again once a delivery lease would have ended
        # (ten minutes covers any lease), so they cost nothing round after round.
        clock.advance(600)
        assert await store.due_events(int(clock.now * 1000), 200) == []
        assert await store.pending_events() == 120
        parked = {(e.attempts, e.last_error) for e in await events(store, BARE)}
        assert parked == {(0, "no webhook configured")}
        # Setting a webhook makes them due at once, delivered in order, once each.
        await store.set_webhook(BARE, rec.url, SECRET)
        async with asyncio.timeout(GUARD_S):
            while len(rec.got) < 120:
                await n.deliver_due()
            while n.busy:
                await n.deliver_due()
        ids = [r.json["id"] for r in rec.got]
        assert ids == [f"{BARE}:app.inactive:{i}" for i in range(120)]
        assert await store.pending_events() == 0


async def test_closing_hands_back_the_events_not_sent(
    store: Store, session: aiohttp.ClientSession
) -> None:
    clock = Clock()
    got: list[str] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.json())["id"])
        entered.set()
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as url:
        await store.set_webhook(SLOW, f"{url}/hook", SECRET)
        await enqueue(store, SLOW, 5)
        n = Notifier(store, http_post(session, 3600), timeout_s=3600, clock=clock)
        async with asyncio.timeout(GUARD_S):
            assert await n.deliver_due(wait_s=0) == 0
            await entered.wait()
            closing = asyncio.ensure_future(n.aclose(3600))
            await asyncio.sleep(0)  # aclose starts: no event is sent after this one
            release.set()
            await closing
        assert got == [f"{SLOW}:app.inactive:0"]
        first, *rest = await events(store, SLOW)
        assert first.delivered_at is not None
        # The four not sent are due again at once, for this or another replica.
        due = await store.due_events(T0_MS, 10)
        assert [e.event_id for e in due] == [e.event_id for e in rest]
        assert {e.attempts for e in rest} == {0}


async def test_the_outbox_claims_workspaces_in_turn(store: Store) -> None:
    await enqueue(store, SLOW, 30)
    await enqueue(store, FAST, 2, at=1_000)
    await enqueue(store, BARE, 1, at=2_000)
    now = EPOCH + 10_000

    def who(got: list[OutboxEvent]) -> list[tuple[str, str]]:
        return [(e.workspace_id, e.event_id.rsplit(":", 1)[1]) for e in got]

    # Every workspace's first event before any second one; at most 3 of one workspace;
    # in each workspace the oldest first.
    assert who(await store.due_events(now, 3, per_workspace=3)) == [
        (SLOW, "0"),
        (FAST, "0"),
        (BARE, "0"),
    ]
    got = await store.due_events(now, 100, lease_ms=60_000, per_workspace=3, exclude=[BARE])
    assert who(got) == [(SLOW, "0"), (SLOW, "1"), (SLOW, "2"), (FAST, "0"), (FAST, "1")]
    assert [e.workspace_id for e in await store.due_events(now, 100)] == [SLOW] * 27 + [BARE]

    # Postponed without counting an attempt: the claimed ones given, and with due_at
    # the workspace's other due events; those leased to someone else stay as they are.
    claimed = [e.id for e in got if e.workspace_id == SLOW and e.id is not None]
    assert await store.postpone_events(SLOW, claimed[1:], now + 5_000, due_at=now) == 29
    assert [e.workspace_id for e in await store.due_events(now + 4_999, 100)] == [BARE]
    assert len(await store.due_events(now + 5_000, 100, per_workspace=100)) == 30
    leased = await store.get_event(f"{SLOW}:app.inactive:0")
    assert leased is not None
    assert (leased.attempts, leased.next_attempt_at) == (0, now + 60_000)

    # Parked only while the workspace has no webhook; setting one wakes them.
    await store.set_webhook(FAST, "http://127.0.0.1:9/h", SECRET)
    fast_ids = [e.id for e in got if e.workspace_id == FAST and e.id is not None]
    assert await store.postpone_events(FAST, fast_ids, now + 10**9, park=True) == 0
    assert await store.postpone_events(BARE, [], now + 10**9, due_at=now, park=True) == 1
    assert [e.workspace_id for e in await store.due_events(now + 10_000, 100)] == [SLOW] * 29
    await store.set_webhook(BARE, "http://127.0.0.1:9/h", SECRET)
    [woken] = await store.due_events(now, 100, exclude=[SLOW, FAST])
    assert (woken.workspace_id, woken.attempts, woken.last_error) == (BARE, 0, None)


async def test_a_receiver_that_answers_errors_slowly_holds_back_its_workspace(
    store: Store, session: aiohttp.ClientSession
) -> None:
    """Each 500 answered just under the timeout held a delivery slot for a whole batch
    (10 events x the timeout); a slow error now stops the batch as no answer does."""
    clock = Clock()
    timeout_s = 60.0
    post = http_post(session, timeout_s)

    async def slow_post(url: str, body: bytes, headers: Mapping[str, str], tenant: str) -> int:
        status = await post(url, body, headers, tenant)
        clock.advance(timeout_s * 0.9)  # answered at 90 % of the timeout (on the test clock)
        return status

    async with receiver() as rec:
        rec.fail = 1000
        await store.set_webhook(SLOW, rec.url, SECRET)
        await enqueue(store, SLOW, 10)
        n = Notifier(store, slow_post, timeout_s=timeout_s, clock=clock)
        async with asyncio.timeout(GUARD_S):
            await n.deliver_due()
            while n.busy:
                await n.deliver_due()
        assert len(rec.got) == 1
        first, *rest = await events(store, SLOW)
        assert first.attempts == 1
        assert first.next_attempt_at is not None
        assert [(e.attempts, e.next_attempt_at) for e in rest] == [(0, first.next_attempt_at)] * 9
        # A quick error does not: the next event is tried at once.
        clock.now = first.next_attempt_at / 1000
        n2 = Notifier(store, post, timeout_s=timeout_s, clock=clock)
        async with asyncio.timeout(GUARD_S):
            await n2.deliver_due()
            while n2.busy:
                await n2.deliver_due()
        assert len(rec.got) == 11
