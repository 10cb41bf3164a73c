"""The admission pipe (meter/redis_layer/pipe.py, meter/admission/calls.py) attacked on a
real redis-server: its connection killed under load, Redis restarted, scripts flushed,
Redis paused past the timeout, a Redis at maxclients, the Admitter closed with calls in
flight. After every attack the money must be exact: each admission ends as a
Decision or MeteringUnavailable; the ambiguous ones are voided as the gateway does
(gateway/owed.py); then each workspace's debit equals what the returned decisions
charged, to the micro-dollar, and its charge records, reservations and aggregates agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from config import Settings
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.admission.decision import Code, Decision
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from tests.support.bot import eventually
from tests.support.clock import Clock
from tests.support.metering import Workspace, admitter, agg_totals, seed
from tests.support.servers import RedisServer, start_redis
from tests.support.settings import make_settings

USD = 1_000_000
FAR = 120.0  # generous deadline for progress, never an assertion on speed
_users = itertools.count(1)

Outcome = Decision | MeteringUnavailable


async def outcome(aw: Awaitable[Decision]) -> Outcome:
    try:
        return await aw
    except MeteringUnavailable as exc:
        return exc


@dataclass
class Books:
    """One workspace's admissions as their callers saw them: what Redis must now hold."""

    w: Workspace
    price: int  # charged per billed unit
    start: int = 0  # free + pool + app balances before the attack
    admitted: list[tuple[str, Decision]] = field(default_factory=list)  # (app, decision)
    refused: list[Decision] = field(default_factory=list)
    ambiguous: list[tuple[str, str, str]] = field(default_factory=list)  # app, rid, token
    unsent: list[tuple[str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    async def admit(self, adm: Admitter, user: str, *, app: int = 0) -> Outcome:
        """One message of ``user``, its outcome booked (and returned for checks)."""
        app_id, token = self.w.apps[app], adm.new_token()
        got = await outcome(adm.admit(app_id, "web", user, token=token))
        if isinstance(got, MeteringUnavailable):
            failed = (app_id, keys.record_id("web", user, "", token), token)
            (self.ambiguous if got.ambiguous else self.unsent).append(failed)
        elif got.token != token or got.rid != keys.record_id("web", user, "", token):
            self.problems.append(f"{user}: decision of another admission {got}")
        elif got.admitted:
            self.admitted.append((app_id, got))
        else:
            self.refused.append(got)
        return got

    async def total(self, client: RedisClient) -> int:
        bal = await projection.read_balances(client, self.w.ws)
        return bal.free + bal.pool + sum(bal.app.values())

    async def settle(self, adm: Admitter, client: RedisClient) -> None:
        """Void what may have been charged, as gateway/owed.py does, then check the money."""
        for app_id, rid, token in self.ambiguous:
            await adm.void(app_id, rid, token)
        for app_id, rid, token in self.unsent:  # never reached Redis: nothing to void
            assert not await adm.void(app_id, rid, token), f"{token} ran although unsent"
        ws, charged = self.w.ws, [d for _, d in self.admitted if d.charged]
        assert self.problems == []
        assert self.start - await self.total(client) == sum(d.charged for d in charged)
        agg = await agg_totals(client, ws)
        assert agg["n"] == sum(d.units for _, d in self.admitted)
        assert (agg["f"], agg["a"], agg["p"]) == (
            sum(d.free for d in charged),
            sum(d.app for d in charged),
            sum(d.pool for d in charged),
        )
        for app_id, d in self.admitted:  # each charge record is its decision's
            rec = await client.get(keys.idem_key(ws, app_id, d.rid))
            if d.charged:
                f = (rec or b"").decode().split("\t")
                want = [str(d.units), d.bsid, str(d.free), str(d.app), str(d.pool)]
                assert (f[0], f[3:8]) == (d.token, want)  # admit.lua's record layout
        for app_id, rid, _ in self.ambiguous:  # voided, or never made
            assert await client.get(keys.idem_key(ws, app_id, rid)) is None
        assert await client.zcard(keys.reservations_key(ws)) == len(charged)


async def sessions(books: Books, adm: Admitter, msgs: int = 3) -> None:
    """A new user's conversation: the first message opens (and pays) a billing session,
    the next ones ride it. Stops at the first message without a decision (the gateway
    would void it; more messages could ride a session that voiding then undoes)."""
    user = f"u{next(_users)}"
    first = await books.admit(adm, user)
    if not isinstance(first, Decision):
        return
    if (first.units, first.charged, first.new_session) != (1, books.price, True) or not first.bsid:
        books.problems.append(f"{user} opener: {first}")
        return
    for _ in range(msgs - 1):
        d = await books.admit(adm, user)
        if not isinstance(d, Decision):
            return
        if (d.units, d.charged, d.bsid, d.new_session) != (0, 0, first.bsid, False):
            books.problems.append(f"{user} in session {first.bsid}: {d}")


async def requests(books: Books, adm: Admitter, msgs: int = 3) -> None:
    """A new user's messages on a per-request product: every one billed."""
    user = f"r{next(_users)}"
    for _ in range(msgs):
        d = await books.admit(adm, user)
        if not isinstance(d, Decision):
            return
        if (d.code, d.units, d.charged) != (0, 1, books.price):
            books.problems.append(f"{user}: {d}")


async def refused(books: Books, adm: Admitter) -> None:
    """A message of a workspace without credit: refused, never charged."""
    d = await books.admit(adm, f"b{next(_users)}")
    if isinstance(d, Decision) and (d.code, d.charged) != (Code.CREDITS_EXHAUSTED, 0):
        books.problems.append(f"broke workspace: {d}")


async def workspaces(client: RedisClient, cfg: Settings, clock: Clock) -> list[Books]:
    """Sessions on free credit, requests on paid funds, requests from free then paid, and
    a workspace without credit: a reply handed to the wrong admission shows."""
    made = [
        Books(await seed(client, cfg, clock, free=1000 * USD), 200_000),
        Books(
            await seed(client, cfg, clock, pool=1000 * USD, products=("contact_center",)), 10_000
        ),
        Books(
            await seed(client, cfg, clock, free=USD, pool=1000 * USD, products=("agent",)), 20_000
        ),
        Books(await seed(client, cfg, clock), 0),
    ]
    for b in made:
        b.start = await b.total(client)
    return made


def traffic(books: list[Books], adm: Admitter) -> list[Callable[[], Awaitable[None]]]:
    """One kind of conversation per workspace of :func:`workspaces`."""
    a, b, c, d = books
    return [
        lambda: sessions(a, adm),
        lambda: requests(b, adm),
        lambda: requests(c, adm),
        lambda: refused(d, adm),
    ]


async def run_while(
    kinds: list[Callable[[], Awaitable[None]]], go: Callable[[], bool], n: int
) -> None:
    """``n`` concurrent workers starting conversations of every kind while ``go()``."""

    async def worker(i: int) -> None:
        for k in itertools.count(i):
            if not go():
                return
            await kinds[k % len(kinds)]()

    await asyncio.gather(*(worker(i) for i in range(n)))


def attack_settings(**overrides: Any) -> Settings:
    """No rate limit binds; a Redis timeout no busy machine reaches unless overridden."""
    base: dict[str, Any] = {"rate_per_minute": 10**7, "rate_per_hour": 10**7}
    return make_settings(**{**base, "redis_timeout_s": 30.0, **overrides})


def decided(books: list[Books]) -> int:
    return sum(len(b.admitted) + len(b.refused) for b in books)


def ambiguous(books: list[Books]) -> int:
    return sum(len(b.ambiguous) for b in books)


async def settle_all(books: list[Books], adm: Admitter, client: RedisClient) -> None:
    for b in books:
        await b.settle(adm, client)
    *funded, broke = books
    assert all(b.admitted for b in funded)  # every kind took part
    assert broke.refused


# --- connections killed under load -------------------------------------------------------


class Killer:
    """CLIENT KILLs every connection opened after :meth:`start` (the Admitter's pipe: this
    client's own connections are older), counting the kills Redis confirms."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.kills = 0
        self.spare: set[int] = set()

    async def ids(self) -> set[int]:
        return {int(c["id"]) for c in await self.client.client_list()}

    async def start(self) -> None:
        self.spare = await self.ids()

    async def run(self, go: Callable[[], bool]) -> None:
        while go():
            for cid in await self.ids() - self.spare:
                if await self.client.execute_command("CLIENT", "KILL", "ID", cid):
                    self.kills += 1
            await asyncio.sleep(0.005)  # poll interval


async def kills_under_load(url: str, kills: int, *, own_loop: bool) -> None:
    client = connect(url)
    clock, cfg = Clock(), attack_settings()
    # On a loop of its own (a thread), the Admitter is closed here, not by the fixture.
    adm = Admitter(client, cfg, clock=clock) if own_loop else admitter(client, cfg, clock)
    try:
        books = await workspaces(client, cfg, clock)
        killer = Killer(client)
        await killer.start()

        def go() -> bool:  # until N kills and some calls they cut short
            return killer.kills < kills or ambiguous(books) < 3

        load = run_while(traffic(books, adm), go, 48)
        await asyncio.wait_for(asyncio.gather(killer.run(go), load), FAR)
        assert killer.kills >= kills
        await settle_all(books, adm, client)
    finally:
        await adm.close()
        await client.aclose()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_connection_kills_under_load_leave_the_money_exact(redis_url: str, loop: str) -> None:
    """Concurrent admissions of four workspaces (new sessions, in-session, per request,
    refused) while the pipe's connection is killed over and over: every admission ends,
    each decision is its own admission's, and after voiding the ambiguous ones every
    workspace's debit, records, reservations and aggregates equal what the decisions say.
    On uvloop too (the gateway's loop), run on a thread of its own."""
    if loop == "uvloop":
        await asyncio.to_thread(uvloop.run, kills_under_load(redis_url, 15, own_loop=True))
    else:
        await kills_under_load(redis_url, 15, own_loop=False)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of its own that wants a password."""
    server = start_redis(tmp_path_factory.mktemp("guarded-attack"))
    server.command("CONFIG", "SET", "requirepass", "s3cret")
    yield server
    server.stop()


async def test_kills_with_a_password_and_a_database_re_send_auth_and_select(
    guarded: RedisServer,
) -> None:
    """Every new connection must AUTH and SELECT again before its calls: a call that ran
    on database 0 would find no workspace (unknown_app) and show as a wrong decision."""
    await kills_under_load(f"redis://:s3cret@127.0.0.1:{guarded.port}/5", 10, own_loop=False)


async def test_an_error_reply_fails_its_workspace_alone(rclient: RedisClient) -> None:
    """A workspace whose hash Redis cannot read (WRONGTYPE inside admit.lua) rides the
    same calls as healthy ones: its admissions fail, the others' replies stay theirs."""
    clock, cfg = Clock(), attack_settings()
    books = await workspaces(rclient, cfg, clock)
    poisoned = Books(await seed(rclient, cfg, clock, free=USD), 200_000)
    await rclient.delete(keys.ws_key(poisoned.w.ws))
    await rclient.set(keys.ws_key(poisoned.w.ws), "not a hash")
    adm = admitter(rclient, cfg, clock)
    kinds = [*traffic(books, adm), lambda: sessions(poisoned, adm)]
    await asyncio.wait_for(run_while(kinds, lambda: decided(books) < 400, 40), FAR)
    assert poisoned.ambiguous
    assert (poisoned.admitted, poisoned.refused, poisoned.unsent) == ([], [], [])
    assert all(not b.ambiguous and not b.unsent for b in books)
    await settle_all(books, adm, rclient)


# --- Redis restarted, scripts flushed, Redis paused, Redis full ----------------------------


async def test_a_redis_restart_mid_batch_recovers_without_a_new_admitter(
    redis_server: RedisServer,
) -> None:
    if not redis_server.running:
        redis_server.start()
    clock, cfg = Clock(), attack_settings()
    client = connect(redis_server.url)
    try:
        books = await workspaces(client, cfg, clock)
        adm = admitter(client, cfg, clock)
        stop = False
        work = asyncio.ensure_future(run_while(traffic(books, adm), lambda: not stop, 32))
        assert await eventually(lambda: decided(books) >= 40, FAR)
        redis_server.kill()  # SIGKILL with calls in flight
        stop = True
        await asyncio.wait_for(work, FAR)  # every admission ended
        assert sum(len(b.ambiguous) + len(b.unsent) for b in books) > 0
        assert not any(b.problems for b in books)
        redis_server.start()  # empty (no persistence), no script loaded
        await client.aclose()
        client = connect(redis_server.url)
        gone = await adm.admit(books[0].w.apps[0], "web", "after")
        assert gone.code == Code.UNKNOWN_APP  # answered by the same Admitter (EVAL)
        fresh = await workspaces(client, cfg, clock)
        await asyncio.wait_for(run_while(traffic(fresh, adm), lambda: decided(fresh) < 80, 16), FAR)
        await settle_all(fresh, adm, client)
    finally:
        await client.aclose()
        if not redis_server.running:
            redis_server.start()


async def test_script_flush_under_load_costs_no_admission(rclient: RedisClient) -> None:
    clock, cfg = Clock(), attack_settings()
    books = await workspaces(rclient, cfg, clock)
    adm = admitter(rclient, cfg, clock)
    await rclient.config_resetstat()
    flushes = 0

    async def flusher() -> None:
        nonlocal flushes
        while flushes < 30:
            await rclient.script_flush()
            flushes += 1
            await asyncio.sleep(0.005)  # poll interval: let some calls through

    load = run_while(traffic(books, adm), lambda: flushes < 30, 32)
    await asyncio.wait_for(asyncio.gather(flusher(), load), FAR)
    assert all(not b.ambiguous and not b.unsent for b in books)  # NOSCRIPT -> EVAL
    stats = await rclient.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] > 0
    await settle_all(books, adm, rclient)


async def test_a_paused_redis_times_calls_out_as_ambiguous_then_serves_again(
    rclient: RedisClient, redis_server: RedisServer
) -> None:
    clock, cfg = Clock(), attack_settings(redis_timeout_s=0.3)
    books = await workspaces(rclient, cfg, clock)
    adm = admitter(rclient, cfg, clock)
    # Connected, and answered: on a busy machine the warm-up itself may pass the 0.3 s
    # (booked ambiguous, voided at the end), so again, as a new user, until decided.
    async with asyncio.timeout(FAR):
        while not isinstance(await books[0].admit(adm, f"warm{next(_users)}"), Decision):
            pass
    before = decided(books), ambiguous(books)
    # Redis answers nothing until every call has timed out (it was CLIENT PAUSE 4000:
    # a busy machine could reach the calls, or their timeouts, after it ended, and
    # Redis then decided them).
    with redis_server.frozen():
        await asyncio.wait_for(asyncio.gather(*(k() for k in traffic(books, adm) * 8)), FAR)
        assert (decided(books), ambiguous(books)) == (before[0], before[1] + 32)
        assert not any(b.unsent for b in books)
        # Calls on new connections time out too while it lasts ...
        await asyncio.wait_for(asyncio.gather(*(k() for k in traffic(books, adm))), FAR)
        assert decided(books) == before[0]
    # ... then they are decided.
    await asyncio.wait_for(until_decided(books, adm), FAR)
    await settle_all(books, adm, rclient)


async def until_decided(books: list[Books], adm: Admitter) -> None:
    """Conversations of every kind until each workspace has a new decision."""
    want = [len(b.admitted) + len(b.refused) + 1 for b in books]
    while any(len(b.admitted) + len(b.refused) < n for b, n in zip(books, want, strict=True)):
        await asyncio.gather(*(k() for k in traffic(books, adm)))


async def test_a_redis_at_maxclients_fails_calls_then_serves_again(rclient: RedisClient) -> None:
    """Redis accepts, answers -ERR max number of clients reached and hangs up before
    the pipe has written anything: the calls fail (they must not hang or wedge the
    pipe), and once Redis takes connections again the same Admitter is served."""
    clock, cfg = Clock(), attack_settings()
    books = await workspaces(rclient, cfg, clock)
    adm = admitter(rclient, cfg, clock)
    ((_, was),) = (await rclient.config_get("maxclients")).items()
    await rclient.config_set("maxclients", len(await rclient.client_list()))
    try:
        await asyncio.wait_for(asyncio.gather(*(k() for k in traffic(books, adm) * 4)), FAR)
        assert decided(books) == 0
        assert sum(len(b.ambiguous) + len(b.unsent) for b in books) == 16
    finally:
        await rclient.config_set("maxclients", was)
    await asyncio.wait_for(until_decided(books, adm), FAR)
    await settle_all(books, adm, rclient)


# --- closing -----------------------------------------------------------------------------


async def test_close_waits_for_calls_in_flight_then_refuses(
    rclient: RedisClient, redis_server: RedisServer
) -> None:
    clock, cfg = Clock(), attack_settings()
    books = await workspaces(rclient, cfg, clock)
    for connected in (True, False):  # calls written and unanswered / still connecting
        adm = admitter(rclient, cfg, clock)
        if connected:
            await books[0].admit(adm, f"warm{next(_users)}")
        with redis_server.frozen() if connected else contextlib.nullcontext():
            # Frozen until the closers wait (it was CLIENT PAUSE 2000: on a busy machine
            # the calls could be answered before close() was called, and nothing was in
            # flight when it was).
            users = [f"c{next(_users)}" for _ in range(40)]
            calls = [asyncio.ensure_future(books[i % 4].admit(adm, u)) for i, u in enumerate(users)]
            await asyncio.sleep(0)  # dispatched
            assert not any(c.done() for c in calls)
            closing = asyncio.gather(adm.close(), adm.close())  # two closers
            await asyncio.sleep(0)
            assert not closing.done()
        await asyncio.wait_for(closing, FAR)
        assert all(c.done() for c in calls)  # no future left pending
        assert all(isinstance(c.result(), Decision) for c in calls)
        late = await asyncio.wait_for(outcome(adm.admit(books[0].w.apps[0], "web", "late")), FAR)
        assert isinstance(late, MeteringUnavailable)
        assert not late.ambiguous
    await settle_all(books, adm, rclient)
