"""The durable store against real SQLite and real PostgreSQL (same tests, both backends)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.store import (
    App,
    AppChannel,
    Caps,
    DuplicateKey,
    Invitation,
    LedgerEntry,
    Licence,
    MissingReference,
    OutboxEvent,
    OwnerChanged,
    SessionRow,
    Store,
    UpgradeRequest,
    UsagePoint,
    UsageRow,
    User,
    Workspace,
    open_store,
)
from meter.store.schema import MIGRATIONS, latest_version
from meter.store.sqlite import SqliteStore

WS = "ws0001"
APP = "ws0001_app1"
APP2 = "ws0001_app2"
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def ms(text: str) -> int:
    """Epoch ms of an ISO UTC timestamp such as ``2024-01-31T23:59:59``."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


StoreFactory = Callable[[], Store]


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[StoreFactory]:
    """Opens more stores on the same database (as separate processes would); closes them."""
    opened: list[Store] = []

    def make() -> Store:
        s = open_store(store_url)
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


@pytest.fixture
async def store(stores: StoreFactory) -> Store:
    s = stores()
    await s.migrate()
    return s


@pytest.fixture
async def ws(store: Store) -> Store:
    """A store holding one user, workspace ``WS`` (with its free grant) and two apps."""
    await store.create_user(User("u1", "owner@example.com", "Owner", "hash-u1", T0))
    await store.create_workspace(
        Workspace(WS, "Acme", "u1", T0, free_expires_at=T0 + 90 * 86_400_000),
        grant=LedgerEntry(WS, "grant_free", 500_000_000, f"free:{WS}", T0),
    )
    await store.create_app(App(APP, WS, "Bot", "automation", "u1", T0))
    await store.create_app(App(APP2, WS, "Search", "search", "u1", T0 + 1))
    return store


def usage(
    bucket: int, units: int = 1, *, app: str = APP, channel: str = "slack", **kw: int
) -> UsageRow:
    refused = {k.removeprefix("refused_"): v for k, v in kw.items() if k.startswith("refused_")}
    amounts = {k: v for k, v in kw.items() if not k.startswith("refused_")}
    return UsageRow(
        WS, bucket, app, channel, "automation", "session", units=units, refused=refused, **amounts
    )


def session(sid: str, start: int, **kw: object) -> SessionRow:
    fields: dict[str, object] = {
        "app_id": APP,
        "channel": "slack",
        "channel_user": "U1",
        "product": "automation",
        "start_ms": start,
        "end_ms": start,
        "messages": 1,
        "amount": 200_000,
    }
    fields.update(kw)
    return SessionRow(WS, sid, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ migrations


async def test_migrate_is_idempotent(stores: StoreFactory) -> None:
    s = stores()
    assert await s.schema_version() == 0
    assert await s.migrate() == [m.version for m in MIGRATIONS]
    assert await s.migrate() == []
    assert await s.schema_version() == latest_version()
    assert await s.ping()


async def test_concurrent_migrate_applies_each_step_once(stores: StoreFactory) -> None:
    results = await asyncio.gather(*(stores().migrate() for _ in range(4)))
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in MIGRATIONS]  # each step by exactly one migrator
    assert await stores().schema_version() == latest_version()


def _open_together(
    store: SqliteStore, start: threading.Barrier, errors: list[BaseException]
) -> None:
    start.wait()
    try:
        store._open().close()
    except BaseException as exc:
        errors.append(exc)


def test_sqlite_processes_opening_a_fresh_file_together_all_open(tmp_path: Path) -> None:
    """Workers starting at once all switch a new file to WAL (SQLite refuses that
    switch with SQLITE_BUSY, not waiting, when two try it together)."""
    openers = 8
    for attempt in range(300):  # the race is narrow: about 1 in 25 rounds without the retry
        path = str(tmp_path / f"fresh{attempt}.db")
        start = threading.Barrier(openers)
        errors: list[BaseException] = []

        threads = [
            threading.Thread(target=_open_together, args=(SqliteStore(path), start, errors))
            for _ in range(openers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"round {attempt}: {errors[0]}"


# -------------------------------------------------------------------- accounts


async def test_users(store: Store) -> None:
    await store.create_user(User("u1", "Ann@Example.com", "Ann", "h1", T0))
    assert await store.get_user("u1") == User("u1", "Ann@Example.com", "Ann", "h1", T0)
    assert (await store.get_user_by_token_hash("h1")) is not None
    assert (await store.get_user_by_email("ann@example.COM")) is not None
    assert await store.get_user("nobody") is None
    with pytest.raises(DuplicateKey):
        await store.create_user(User("u2", "ann@example.com", "Other", "h2", T0))
    with pytest.raises(DuplicateKey):
        await store.create_user(User("u3", "x@example.com", "Other", "h1", T0))


async def test_workspace_membership_and_apps(ws: Store) -> None:
    store = ws
    w = await store.get_workspace(WS)
    assert w is not None
    assert w.type == "standard"
    assert w.owner_id == "u1"
    assert await store.list_workspaces() == [WS]
    assert await store.is_member(WS, "u1")
    await store.create_user(User("u2", "dev@example.com", "Dev", "hash-u2", T0))
    assert not await store.is_member(WS, "u2")
    assert await store.add_member(WS, "u2") is True
    assert await store.add_member(WS, "u2") is False
    assert await store.list_members(WS) == ["u1", "u2"]
    assert [x.id for x in await store.list_user_workspaces("u2")] == [WS]

    assert [a.id for a in await store.list_apps(WS)] == [APP, APP2]
    changed = await store.update_app(APP, owner_id="u2", use_free_credits=False, suspended=True)
    assert changed is not None
    was, app = changed  # before and after, read in the change's transaction
    assert (was.owner_id, was.use_free_credits, was.suspended) == ("u1", True, False)
    assert app.owner_id == "u2"
    assert app.use_free_credits is False
    assert app.suspended is True
    assert [a.id for a in await store.list_apps(WS, owner_id="u2")] == [APP]
    assert await store.update_app("ws0001_nope", name="x") is None
    with pytest.raises(ValueError, match="cannot change app fields"):
        await store.update_app(APP, workspace_id="other")
    with pytest.raises(MissingReference):
        await store.create_app(App("zz99_app", "zz99", "X", "search", "u1", T0))

    await store.add_collaborator(APP, "u1", "viewer")
    await store.add_collaborator(APP, "u1", "tester")
    assert await store.get_collaborator_role(APP, "u1") == "tester"
    assert len(await store.list_collaborators(APP)) == 1
    assert await store.remove_collaborator(APP, "u1")
    assert await store.get_collaborator_role(APP, "u1") is None

    assert await store.set_webhook(WS, "https://hooks.example/x", "s3cret")
    w = await store.get_workspace(WS)
    assert w is not None
    assert w.webhook_url == "https://hooks.example/x"
    assert not await store.set_webhook("nope", None, None)


async def test_upgrade_requests_and_licences(ws: Store) -> None:
    store = ws
    assert await store.create_upgrade_request_if_none_open(
        UpgradeRequest("r1", WS, ("search", "agent"), T0, message="please")
    )
    assert not await store.create_upgrade_request_if_none_open(
        UpgradeRequest("r2", WS, ("agent",), T0 + 1)
    )  # one open request per workspace
    [req] = await store.list_upgrade_requests()
    assert req.products == ("search", "agent")
    assert req.status == "open"
    lic = [Licence(WS, "search", 10_000, 100, 5_000)]
    assert await store.upgrade_workspace(WS, lic)
    w = await store.get_workspace(WS)
    assert w is not None
    assert w.type == "enterprise"
    assert await store.get_licences(WS) == lic
    assert await store.list_upgrade_requests() == []
    granted = await store.get_upgrade_request("r1")
    assert granted is not None
    assert granted.status == "granted"
    await store.set_licences(WS, [Licence(WS, "agent", 5, 1, 2)])
    assert [x.product for x in await store.get_licences(WS)] == ["agent"]
    assert not await store.upgrade_workspace("nope", [])


# ---------------------------------------------------------------------- ledger


async def test_ledger_is_idempotent_by_reference(ws: Store) -> None:
    store = ws
    topup = LedgerEntry(WS, "topup", 100_000_000, "pay-1", T0 + 5)
    assert await store.add_ledger_entry(topup) is True
    assert await store.add_ledger_entry(topup) is False
    again = LedgerEntry(WS, "topup", 999_000_000, "pay-1", T0 + 6)
    assert await store.add_ledger_entry(again) is False
    assert await store.add_ledger_entry(
        LedgerEntry(WS, "topup", 150_000_000, "pay-2", T0 + 7, app_id=APP, detail={"by": "u1"})
    )
    assert await store.add_ledger_entry(LedgerEntry(WS, "lapse", -20_000_000, "lapse-1", T0 + 8))
    assert await store.add_ledger_entry(
        LedgerEntry(WS, "reconcile", -1, "rec-1", T0 + 9, pool="free")
    )
    entries = await store.ledger_entries(WS)
    assert [e.reference for e in entries] == [f"free:{WS}", "pay-1", "pay-2", "lapse-1", "rec-1"]
    assert entries[2].detail == {"by": "u1"}
    assert entries[2].pool == "paid"
    assert [e.reference for e in await store.ledger_entries(WS, kind="topup")] == ["pay-1", "pay-2"]
    balance = await store.ledger_balance(WS)
    assert balance.free == 500_000_000 - 20_000_000 - 1
    assert balance.shared == 100_000_000
    assert balance.apps == {APP: 150_000_000}
    assert balance.paid == 250_000_000
    # Same reference in another workspace is a different entry.
    assert await store.add_ledger_entry(LedgerEntry("ws0002", "topup", 1, "pay-1", T0))
    with pytest.raises(ValueError, match="unknown ledger kind"):
        await store.add_ledger_entry(LedgerEntry(WS, "gift", 1, "x", T0))  # type: ignore[arg-type]


# ----------------------------------------------------------------- flush write


async def test_flush_batch_is_written_exactly_once(ws: Store) -> None:
    store = ws
    rows = [usage(T0, 2, amount_free=400_000, messages=7), usage(T0, 1, app=APP2)]
    sessions = [session("s1", T0)]
    ledger = [LedgerEntry(WS, "lapse", -5, "lapse:1", T0)]
    events = [OutboxEvent(WS, "ev-1", "balance.low", {"remaining": "10.00"}, T0)]
    kwargs = {
        "usage_rows": rows,
        "session_rows": sessions,
        "ledger_entries": ledger,
        "outbox_events": events,
    }
    assert await store.write_flush_batch("b-1", WS, "ag", T0, **kwargs) is True  # type: ignore[arg-type]
    before = await store.usage_totals(WS)
    assert before.total_units == 3
    assert before.messages == 7
    assert before.amount_free == 400_000
    assert await store.write_flush_batch("b-1", WS, "ag", T0, **kwargs) is False  # type: ignore[arg-type]
    assert await store.usage_totals(WS) == before
    assert len(await store.sessions(WS, 0, T0 + 1)) == 1
    assert len(await store.ledger_entries(WS, kind="lapse")) == 1
    assert len(await store.list_events(WS)) == 1
    batch = await store.get_flush_batch("b-1")
    assert batch is not None
    assert batch.rows == 5
    assert batch.kind == "ag"
    assert await store.get_flush_batch("b-2") is None


async def test_concurrent_writers_of_one_batch_exactly_one_wins(
    ws: Store, stores: StoreFactory
) -> None:
    writers = [ws, stores(), stores(), stores()]
    rows = [usage(T0 + i * 60_000, 1) for i in range(50)]
    results = await asyncio.gather(
        *(
            w.write_flush_batch("b-race", WS, "ag", T0, usage_rows=rows)
            for w in writers
            for _ in range(3)
        )
    )
    assert results.count(True) == 1
    assert (await ws.usage_totals(WS)).total_units == 50


async def test_late_batches_for_the_same_bucket_add_up(ws: Store, stores: StoreFactory) -> None:
    store = ws
    assert await store.write_flush_batch(
        "b-1:gen1", WS, "ag", T0, usage_rows=[usage(T0, 2, amount_free=1, refused_rate_limited=1)]
    )
    assert await store.write_flush_batch(
        "b-1:gen2",
        WS,
        "ag",
        T0,
        usage_rows=[usage(T0, 3, amount_pool=5, refused_rate_limited=2, refused_weird=1)],
    )
    # Many concurrent late batches from several writers, all for the same key.
    writers = [store, stores(), stores()]
    await asyncio.gather(
        *(
            writers[i % 3].write_flush_batch(
                f"b-1:gen{i}", WS, "ag", T0, usage_rows=[usage(T0, 1), usage(T0, 1)]
            )
            for i in range(3, 23)
        )
    )
    [row] = [r async for r in store.iter_usage(WS, 0, T0 + 1)]
    assert row.units == 2 + 3 + 40
    assert row.amount_free == 1
    assert row.amount_pool == 5
    assert row.refused == {"rate_limited": 3, "other": 1}


async def test_failed_batch_rolls_back_entirely(ws: Store) -> None:
    store = ws
    bad = OutboxEvent(WS, "ev-x", "funds.added", {"x": object()}, T0)
    with pytest.raises(TypeError):
        await store.write_flush_batch(
            "b-9", WS, "ag", T0, usage_rows=[usage(T0, 4)], outbox_events=[bad]
        )
    assert await store.get_flush_batch("b-9") is None
    assert (await store.usage_totals(WS)).total_units == 0
    assert await store.write_flush_batch("b-9", WS, "ag", T0, usage_rows=[usage(T0, 4)])
    assert (await store.usage_totals(WS)).total_units == 4


async def test_batch_rows_must_belong_to_the_batch_workspace(ws: Store) -> None:
    foreign = UsageRow("ws0002", T0, "ws0002_a", "slack", "automation", "session", units=1)
    with pytest.raises(ValueError, match="in another batch"):
        await ws.write_flush_batch("b-f", WS, "ag", T0, usage_rows=[foreign])
    assert await ws.get_flush_batch("b-f") is None


async def test_session_rows_merge_by_id(ws: Store) -> None:
    store = ws
    first = session("s1", T0, end_ms=T0 + 1_000, messages=3, amount=200_000, seq=1)
    await store.write_flush_batch("sr-1", WS, "sr", T0, session_rows=[first])
    # A later snapshot: more messages, later end; the amount was refunded (seq 2).
    later = session("s1", T0 + 500, end_ms=T0 + 9_000, messages=5, amount=0, seq=2)
    await store.write_flush_batch("sr-2", WS, "sr", T0, session_rows=[later])
    # A stale snapshot arriving last: cannot shrink anything nor restore the amount.
    stale = session("s1", T0, end_ms=T0 + 2_000, messages=4, amount=200_000, seq=1)
    await store.write_flush_batch("sr-3", WS, "sr", T0, session_rows=[stale])
    [s] = await store.sessions(WS, T0, T0 + 1)
    assert (s.start_ms, s.end_ms, s.messages, s.amount, s.seq) == (T0, T0 + 9_000, 5, 0, 2)
    # Equal seq: the newest batch wins the amount; within a batch the later row wins.
    dup = [session("s2", T0, amount=1), session("s2", T0, amount=2, messages=2)]
    await store.write_flush_batch("sr-4", WS, "sr", T0, session_rows=dup)
    await store.write_flush_batch("sr-5", WS, "sr", T0, session_rows=[session("s2", T0, amount=3)])
    got = {x.id: x for x in await store.sessions(WS, T0, T0 + 1)}
    assert got["s2"].amount == 3
    assert got["s2"].messages == 2


# ---------------------------------------------------------------- usage reads


async def test_usage_series_aligns_periods_in_utc(ws: Store) -> None:
    store = ws
    stamps = [
        "2024-01-31T23:59:00",  # Wednesday; January
        "2024-02-01T00:00:00",  # Thursday; February
        "2024-02-04T23:00:00",  # Sunday: still the ISO week of Mon 2024-01-29
        "2024-02-05T00:00:00",  # Monday: a new ISO week
        "2024-02-05T00:59:00",  # same hour as the previous
        "2024-02-29T12:00:00",  # leap day
        "2024-03-01T00:00:00",
    ]
    rows = [usage(ms(t), 1, amount_free=10) for t in stamps]
    rows.append(UsageRow(WS, ms(stamps[1]), APP2, "web", "search", "request", units=5))
    await store.write_flush_batch("b", WS, "ag", 0, usage_rows=rows)
    lo, hi = ms("2024-01-01T00:00:00"), ms("2024-04-01T00:00:00")

    def series(points: list[UsagePoint]) -> list[tuple[str, int]]:
        return [
            (datetime.fromtimestamp(p.start / 1000, UTC).strftime("%Y-%m-%dT%H"), p.total_units)
            for p in points
        ]

    assert series(await store.usage_series(WS, lo, hi, "month")) == [
        ("2024-01-01T00", 1),
        ("2024-02-01T00", 10),
        ("2024-03-01T00", 1),
    ]
    assert series(await store.usage_series(WS, lo, hi, "week")) == [
        ("2024-01-29T00", 8),  # Mon 29 Jan .. Sun 4 Feb
        ("2024-02-05T00", 2),
        ("2024-02-26T00", 2),  # Mon 26 Feb .. Sun 3 Mar, across the month end
    ]
    assert series(await store.usage_series(WS, lo, hi, "day")) == [
        ("2024-01-31T00", 1),
        ("2024-02-01T00", 6),
        ("2024-02-04T00", 1),
        ("2024-02-05T00", 2),
        ("2024-02-29T00", 1),
        ("2024-03-01T00", 1),
    ]
    hours = await store.usage_series(WS, lo, hi, "hour")
    assert ("2024-02-05T00", 2) in series(hours)
    assert len(hours) == 6
    feb = await store.usage_series(WS, lo, hi, "month", channel="web")
    assert len(feb) == 1
    assert feb[0].requests == 5
    assert feb[0].sessions == 0
    only_app = await store.usage_series(WS, lo, hi, "month", app_id=APP)
    assert sum(p.sessions for p in only_app) == 7
    assert sum(p.amount for p in only_app) == 70
    assert await store.usage_series(WS, lo, hi, "month", app_ids=[]) == []
    filled = await store.usage_series(WS, lo, hi, "month", app_ids=[APP2], fill=True)
    assert [p.total_units for p in filled] == [0, 5, 0]
    # Half-open range on the bucket start.
    assert series(await store.usage_series(WS, lo, ms(stamps[1]), "month")) == [
        ("2024-01-01T00", 1)
    ]
    with pytest.raises(ValueError, match="granularity must be one of"):
        await store.usage_series(WS, lo, hi, "year")


async def test_usage_totals_spent_and_export(ws: Store) -> None:
    store = ws
    rows = [
        usage(T0 + i * 60_000, 1, amount_free=100, amount_app=20, amount_pool=3, messages=2)
        for i in range(2500)
    ]
    rows.append(usage(T0, 1, app=APP2, channel="web", refused_credits_exhausted=4))
    assert await store.write_flush_batch("b-big", WS, "ag", T0, usage_rows=rows)
    totals = await store.usage_totals()
    assert totals.sessions == 2501
    assert totals.messages == 5000
    assert totals.refused == {"credits_exhausted": 4}
    spent = await store.usage_spent(WS)
    assert spent.free == 250_000
    assert spent.shared == 7_500
    assert spent.apps == {APP: 50_000}
    exported = [r async for r in store.iter_usage(None, 0, 2**62, page=700)]
    assert len(exported) == 2501
    keys = [r.key for r in exported]
    assert keys == sorted(keys)
    assert len([r async for r in store.iter_usage(WS, 0, 2**62, channel="web")]) == 1


async def test_sessions_query(ws: Store) -> None:
    store = ws
    rows = [session(f"s{i:04d}", T0 + (i // 3) * 1000) for i in range(30)]
    rows.append(session("w1", T0, app_id=APP2, channel="web"))
    assert await store.write_flush_batch("sr", WS, "sr", T0, session_rows=rows)
    out = [s async for s in store.iter_sessions(WS, T0, T0 + 5_000, page=4)]
    assert [s.id for s in out] == [
        *sorted(["w1", *(f"s{i:04d}" for i in range(3))]),
        *(f"s{i:04d}" for i in range(3, 15)),
    ]
    assert [s.id for s in await store.sessions(WS, T0, T0 + 1, channel="web")] == ["w1"]
    assert len(await store.sessions(WS, T0, T0 + 10_000, app_id=APP)) == 30
    assert len(await store.sessions(WS, T0, T0 + 10_000, app_ids=[APP, APP2], limit=7)) == 7
    assert await store.sessions("ws0002", 0, 2**62) == []


# ----------------------------------------------------------------- audit, outbox


async def test_audit_log(store: Store) -> None:
    first = await store.add_audit("op", "workspace.upgrade", "ws:1", {"type": "standard"}, None)
    second = await store.add_audit("u1", "app.update", "app:1", None, {"suspended": True}, at=5)
    assert second > first
    [entry] = await store.list_audit(target="app:1")
    assert entry.after == {"suspended": True}
    assert entry.before is None
    assert entry.at == 5
    assert [e.id for e in await store.list_audit()] == [second, first]


async def test_outbox_retry_cycle(store: Store, stores: StoreFactory) -> None:
    event = OutboxEvent(WS, "ev-1", "free_credits.expired", {"lapsed": "12.50"}, T0)
    assert await store.enqueue(event) is True
    assert await store.enqueue(event) is False
    assert await store.due_events(T0 - 1) == []
    [due] = await store.due_events(T0)
    assert due.payload == {"lapsed": "12.50"}
    assert due.attempts == 0
    assert due.id is not None
    assert await store.mark_failed(due.id, "HTTP 500", T0 + 1_000)
    assert await store.due_events(T0 + 999) == []
    [again] = await store.due_events(T0 + 1_000)
    assert again.attempts == 1
    assert again.last_error == "HTTP 500"
    assert await store.mark_delivered(due.id, at=T0 + 1_001)
    assert await store.due_events(T0 + 10**9) == []
    assert not await store.mark_delivered(due.id)
    got = await store.get_event("ev-1")
    assert got is not None
    assert got.delivered_at == T0 + 1_001
    assert got.attempts == 2

    # Giving up: kept, never due again.
    await store.enqueue(OutboxEvent(WS, "ev-2", "app.inactive", {}, T0))
    [dead] = await store.due_events(T0)
    assert dead.id is not None
    assert await store.mark_failed(dead.id, "410 Gone", None)
    assert await store.due_events(T0 + 10**9) == []


async def test_outbox_lease_hands_each_event_to_one_dispatcher(
    store: Store, stores: StoreFactory
) -> None:
    for i in range(40):
        await store.enqueue(OutboxEvent(WS, f"ev-{i}", "balance.low", {"i": i}, T0 + i))
    others = [stores(), stores()]
    claims = await asyncio.gather(
        *(s.due_events(T0 + 100, 15, lease_ms=30_000) for s in [store, *others, store])
    )
    ids = [e.event_id for batch in claims for e in batch]
    assert len(ids) == len(set(ids))
    while batch := await others[0].due_events(T0 + 100, 15, lease_ms=30_000):
        ids.extend(e.event_id for e in batch)
    assert len(ids) == len(set(ids)) == 40
    # The lease runs out: undelivered events are due again.
    assert len(await store.due_events(T0 + 100 + 30_000, 100)) == 40


# ------------------------------------------------------------------- factory


async def test_ping_is_false_when_postgres_is_unreachable() -> None:
    s = open_store("postgresql://postgres@127.0.0.1:1/nope")
    try:
        assert await s.ping() is False
    finally:
        await s.close()


# ------------------------------------------------------------- console sessions


async def test_console_sessions_are_capped_per_user_and_end_with_their_token(
    store: Store, stores: StoreFactory
) -> None:
    from meter.store import ApiToken
    from meter.store.console_sessions import ConsoleSession

    await store.create_user(User("u1", "a@example.com", "A", "hash-a", T0))
    await store.create_user(User("u2", "b@example.com", "B", "hash-b", T0))
    await store.create_token(ApiToken("t-second", "u1", "second", "hash-a2", "x", T0))
    first, other = "t" + "hash-a"[:16], "t" + "hash-b"[:16]

    def sess(n: int, user: str = "u1", token: str = first, at: int = T0) -> ConsoleSession:
        return ConsoleSession(f"{user}-{n:03d}", user, token, "csrf", at, at + 3_600_000)

    async def hashes(user: str) -> set[str]:
        async with store.connection() as c:
            rows = await c.fetch("SELECT id_hash FROM console_sessions WHERE user_id = ?", user)
        return {r["id_hash"] for r in rows}

    assert await store.create_console_session(sess(0, "u2", other), 3)
    # Sign-ins in one millisecond keep the newest: the one just made is never the victim.
    for n in range(1, 6):
        assert await store.create_console_session(sess(n, at=T0 + n // 3), 3)
        assert await store.count_console_sessions("u1") == min(n, 3)
        assert f"u1-{n:03d}" in await hashes("u1")
    assert await hashes("u1") == {"u1-003", "u1-004", "u1-005"}
    # Concurrent sign-ins of one user (separate connections) never pass the cap together.
    more = [stores() for _ in range(4)]
    oks = await asyncio.gather(
        *(s.create_console_session(sess(10 + i, at=T0 + 10), 3) for i, s in enumerate(more))
    )
    assert oks == [True] * 4
    assert await store.count_console_sessions("u1") == 3
    assert await hashes("u2") == {"u2-000"}  # another user's sessions are theirs

    # Revoking a token deletes its sessions, and no session is made with it afterwards.
    assert await store.create_console_session(sess(20, token="t-second", at=T0 + 20), 5)
    assert await store.revoke_token("u1", first, T0 + 30)
    assert await hashes("u1") == {"u1-020"}
    assert not await store.create_console_session(sess(21, at=T0 + 31), 5)
    assert not await store.create_console_session(sess(22, "u2", first, T0 + 31), 5)
    assert await hashes("u1") == {"u1-020"}
    assert await hashes("u2") == {"u2-000"}


# ------------------------------------------------------------------ owner-conditional writes


async def test_app_writes_land_only_while_the_expected_owner_owns_the_app(
    ws: Store, stores: StoreFactory
) -> None:
    """The store layer of the admin API's owner check (tests/system/test_owner_race.py):
    u1 was authorized as the app's owner, then another connection (another gateway)
    handed the app to u2, then u1's write comes. Each app write given ``expect_owner``
    refuses it with :class:`OwnerChanged`, nothing written; the same write expecting the
    current owner lands, and a write on an app that is gone is no conflict."""
    for uid in ("u2", "u3"):
        await ws.create_user(User(uid, f"{uid}@example.com", uid, f"hash-{uid}", T0))
    await ws.add_member(WS, "u2")
    await ws.add_collaborator(APP, "u3", "viewer")
    ch = AppChannel(APP, "web", "jwt_hs256", "enc", T0)
    assert await ws.put_app_channel(ch) is None  # a new channel: none replaced
    inv = Invitation("inv1", "app", APP, WS, APP, "u3", "tester", "u1", T0)
    caps = Caps(10, 10, 10)
    moved, _, before = await stores().transfer_app(APP, "u2")  # the other gateway's handover
    assert moved is not None
    assert (moved.owner_id, before) == ("u2", "u1")

    def writes(owner: str) -> list[Callable[[], Awaitable[object]]]:
        return [
            lambda: ws.update_app(APP, expect_owner=owner, upstream_url="http://x.example/"),
            lambda: ws.put_app_channel(replace(ch, secret_enc="new"), 20, expect_owner=owner),
            lambda: ws.put_app_channel(replace(ch, channel="chat"), expect_owner=owner),
            lambda: ws.invite(replace(inv, user_id="u1"), caps, 0, 0, owner),
            lambda: ws.withdraw("app", APP, "u3", 0, expect_owner=owner),
            lambda: ws.delete_app_channel(APP, "web", expect_owner=owner),
            lambda: ws.transfer_app(APP, "u1", expect_owner=owner),
        ]

    for write in writes("u1"):
        with pytest.raises(OwnerChanged):
            await write()
    app = await ws.get_app(APP)
    assert app is not None
    assert (app.owner_id, app.upstream_url) == ("u2", None)
    assert await ws.list_app_channels(APP) == [ch]
    assert await ws.get_collaborator_role(APP, "u3") == "viewer"
    assert await ws.user_invitations_page("u1", 0, after=None, limit=10) == []

    for write in writes("u2"):  # the owner as checked: each lands
        await write()
    app = await ws.get_app(APP)
    assert app is not None
    assert (app.owner_id, app.upstream_url) == ("u1", "http://x.example/")
    assert [c.channel for c in await ws.list_app_channels(APP)] == ["chat"]
    assert await ws.get_collaborator_role(APP, "u3") is None

    gone = "ws0001_gone"
    assert await ws.update_app(gone, expect_owner="u1", name="x") is None
    assert await ws.transfer_app(gone, "u1", expect_owner="u1") == (None, [], None)
    assert not await ws.delete_app_channel(gone, "web", expect_owner="u1")
