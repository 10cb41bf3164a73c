"""The fast path's per-message cuts against the code they replaced, pinned from git (as
tests/integration/test_admit_equivalence.py pins admit.lua): random hostile inputs must
give the same outcome, callback for callback.

* gateway.fastpath.upstream before 67f0cda (a new llhttp parser per message, every field
  checked in full): a kept connection given answers glued to stray bytes, interim 1xx
  answers, trailers, bodiless 204/304s, bare LFs, lenient heads, Connection: close and
  HTTP/1.0, cut at random places;
* gateway.fastpath.wire.answer_head before d7e05b2 (no memo of names), with the memo
  filled by another bot's names first;
* gateway.fastpath.request before 2001bba: the header count and size at their limits;
* gateway.tenant_share before 9c27e15: takes, waits, frees and give-ups of several
  tenants at several bots.

The request head forwarded to the bot (gateway.fastpath.head) has its own file,
tests/unit/test_fastpath_head.py.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import httptools

from gateway import tenant_share as share_now
from gateway.fastpath import request as request_now
from gateway.fastpath import upstream as upstream_now
from gateway.fastpath import wire as wire_now
from tests.support.pinned import pinned

DATE = "Wed, 02 Dec 2026 01:40:00 GMT"


# ---------------------------------------------------------------- bot answers


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Log:
    """What a receiver was told, in order; as the exchange, it closes a connection not
    kept (what it would read after does not count)."""

    def __init__(self, events: list[Any], conn: Any) -> None:
        self.events = events
        self.conn = conn

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("head", status, reason, list(headers)))

    def on_body(self, chunk: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + chunk)
        else:
            self.events.append(("body", chunk))

    def on_complete(self, keep_alive: bool) -> None:
        self.events.append(("complete", keep_alive))
        if not keep_alive:
            self.conn.close()

    def on_lost(self) -> None:
        self.events.append(("lost",))

    def broken(self, exc: BaseException) -> None:
        raise exc


def _connection(module: Any) -> Any:
    pool = SimpleNamespace(loop=SimpleNamespace(time=lambda: 0.0), lost=lambda conn: None)
    conn = module.UpstreamConnection(pool, ("bot", 80))
    conn.transport = Transport()
    return conn


def _answer(rng: random.Random) -> bytes:
    nl = b"\n" if rng.random() < 0.1 else b"\r\n"
    out = b""
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # interim answers
        out += rng.choice(
            [b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints" + nl + b"Link: </a>"]
        )
        out += nl + nl
    version = rng.choice([b"1.1"] * 5 + [b"1.0"])
    status = rng.choice([200, 200, 201, 204, 304, 404, 302, 503])
    out += b"HTTP/%b %d %b" % (version, status, rng.choice([b"OK", b"", b"Why \x01"])) + nl
    fields = [
        rng.choice([b"X-A", b"x-a", b"Connection", b"CONNECTION", b"Keep-Alive", b"Date",
                    b"Proxy-X", b"Set-Cookie", b"Trailer", b"X-" + b"n" * 70])
        + b": "
        + rng.choice([b"v", b"keep-alive", b"close", b"x-a", b"v \t", b"", b"a\x01b",
                      b"c\x7fd", b"\xff", b"x" * rng.choice([8189, 8190, 8191])])
        for _ in range(rng.choice([0, 1, 2, 3, 3, 4, 126, 127, 128]))
    ]  # fmt: skip
    body = rng.choice([b"", b"a", b"hello world"])
    framing = rng.choice(["length", "length", "chunked", "none"])
    if status in (204, 304):
        framing = rng.choice(["length0", "none", "length"])
    if framing.startswith("length"):
        fields.append(b"Content-Length: %d" % (0 if framing == "length0" else len(body)))
    elif framing == "chunked":
        fields.append(b"Transfer-Encoding: chunked")
    out += b"".join(f + nl for f in fields) + nl
    if framing == "length" and status not in (204, 304):
        out += body
    elif framing == "chunked" and status not in (204, 304):
        for piece in (body[:3], body[3:]):
            if piece:
                ext = rng.choice([b"", b";x=1", b"  "])
                out += b"%x%b" % (len(piece), ext) + nl + piece + nl
        out += b"0" + nl
        for _ in range(rng.choice([0, 0, 1, 2])):  # trailers
            out += rng.choice([b"X-Trailer: t", b"Connection: close", b"X-A: a"]) + nl
        out += nl
    return out


_EXTRA = [b"", b"", b"", b"\r\n", b"\n", b"\r", b"HTTP/1.1 200 OK\r\nX-Stray: ",
          b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nS", b"junk"]  # fmt: skip


def _exchanges(module: Any, script: list[tuple[bytes, list[int]]]) -> list[Any]:
    """Each answer of ``script`` read on one kept connection, cut where it says."""
    conn = _connection(module)
    events: list[Any] = []
    for data, cuts in script:
        if conn.transport.aborted:
            break
        events.append(("send",))
        conn.send(Log(events, conn), b"GET / HTTP/1.1\r\nHost: bot\r\n\r\n")
        start = 0
        for cut in [*cuts, len(data)]:
            if conn.transport.aborted:
                break
            if cut > start:
                conn.data_received(data[start:cut])
                start = cut
    events.append(("aborted", conn.transport.aborted))
    return events


def test_a_kept_parser_reads_every_answer_as_a_new_one_did() -> None:
    before = pinned("67f0cda^", "gateway/fastpath/upstream.py")
    rng = random.Random(20261204)
    for _ in range(1500):
        script, extras = [], []
        for _ in range(rng.randrange(1, 7)):
            extras.append(rng.choice(_EXTRA))
            data = _answer(rng) + extras[-1]
            cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(3)))
            script.append((data, cuts))
        now, then = _exchanges(upstream_now, script), _exchanges(before, script)
        # Since, a connection that read bytes after an answer, in the answer's read, is
        # not kept (the code before kept it, its next answer read by a new parser): the
        # same up to there, and only there.
        pairs = enumerate(zip(now, then, strict=False))
        differ = next((i for i, (a, b) in pairs if a != b), None)
        if differ is not None and now[differ] == ("complete", False):
            assert then[differ] == ("complete", True), script
            assert extras[now[:differ].count(("send",)) - 1], script  # bytes after it
            now, then = now[:differ], then[:differ]
        assert now == then, script


# ---------------------------------------------------------------- answer heads

NAMES = [b"Connection", b"connection", b"CONNECTION", b"cOnNeCtIoN", b"Content-Length",
         b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding", b"transfer-encoding",
         b"Date", b"DATE", b"Server", b"sErVeR", b"Keep-Alive", b"KEEP-ALIVE", b"Proxy-Auth",
         b"proxy-", b"PROXY-CONNECTION", b"Proxy", b"Proxyx", b"TE", b"te", b"Upgrade",
         b"X-A", b"x-a", b"X-B", b"Set-Cookie", b"SET-COOKIE", b"Trailer", b"Via",
         b"Clear-Site-Data", b"clear-site-data", b"X-" + b"a" * 62, b"X-" + b"a" * 63,
         b"Proxy-" + b"p" * 70, b"Content-Length" + b"x" * 60, b"Connection-X"]  # fmt: skip
VALUES = [b"", b"1", b"0", b"x-a", b"X-A, x-b", b"close", b"keep-alive", b"chunked",
          b" x-b ,", b"te, upgrade", b"content-length", b"server", b"date", b"proxy-auth",
          b"keep-alive, close", b"Keep-Alive", b"clear-site-data", b"\xc3\xa9", b"\xff",
          b"a,,b", b"cg_session=1", b"x=1, __Host-CG_SESSION=2", b"x\tb", b"5",
          b"X-" + b"A" * 63, b"connection", b"transfer-encoding"]  # fmt: skip


def test_answer_heads_are_what_they_were_with_any_names_remembered() -> None:
    before = pinned("d7e05b2^", "gateway/fastpath/wire.py")
    rng = random.Random(20261205)
    for phase in range(2):
        if phase:  # another bot's names fill the memo first
            for n in range(2000):
                name = b"X-Junk-%d" % n
                raw = [(name, b"v"), (name.upper(), b"v"), (b"Content-Length", b"0")]
                assert wire_now.answer_head(200, b"OK", raw, DATE, True) == before.answer_head(
                    200, b"OK", raw, DATE, True
                )
        for _ in range(4000):
            raw = [(rng.choice(NAMES), rng.choice(VALUES)) for _ in range(rng.randrange(10))]
            status = rng.choice([200, 204, 304, 302, 404, 503])
            keep = rng.random() < 0.5
            got = wire_now.answer_head(status, b"Reason", raw, DATE, keep)
            assert got == before.answer_head(status, b"Reason", raw, DATE, keep), raw
    assert len(wire_now._KINDS) <= wire_now._KINDS_MAX
    assert all(len(name) <= wire_now._NAME_MAX for name in wire_now._KINDS)


# ---------------------------------------------------------------- request heads


def _request_outcome(module: Any, data: bytes) -> Any:
    req = module.RequestParser(1 << 20)
    try:
        req.parser.feed_data(data)
    except httptools.HttpParserCallbackError as exc:
        return type(exc.__context__).__name__
    except httptools.HttpParserError as exc:
        return f"llhttp: {exc}"
    done = req.done
    return done and (done.method, done.target, done.headers, done.content_length, done.body)


def test_request_heads_at_their_limits_are_decided_as_before() -> None:
    before = pinned("2001bba^", "gateway/fastpath/request.py")
    limit, field, most = request_now.HEAD_LIMIT, request_now.MAX_FIELD, request_now.MAX_HEADERS
    rng = random.Random(20261206)
    cases: list[list[bytes]] = []
    for count in (most - 1, most, most + 1):
        for size in (1, 17, field // 2):
            cases.append([b"X-%d: %b" % (n, b"v" * size) for n in range(count - 1)])
    # the sum of fields at HEAD_LIMIT exactly, one under, one over
    for delta in (-1, 0, 1):
        per, rest = divmod(limit + delta - len(b"HostbotContent-Length2"), 20)
        names = [b"X-%02d" % n for n in range(20)]
        values = [b"v" * (per - 4 + (1 if n < rest else 0)) for n in range(20)]
        cases.append([n + b": " + v for n, v in zip(names, values, strict=True)])
    for edge in (field - 1, field, field + 1):  # one field at MAX_FIELD
        cases.append([b"X-Long: " + b"v" * (edge - len(b"X-Long"))])
        cases.append([b"X-Long: " + b"v" * (edge - len(b"X-Long")) + b" \t"])
    for _ in range(300):
        cases.append(
            [b"X-%d: %b" % (n, b"v" * rng.choice([0, 1, 600, 700, 4000]))
             for n in range(rng.choice([0, 5, 98, 99, 100, 101]))]
        )  # fmt: skip
    for fields in cases:
        data = b"POST /hooks/c/app1 HTTP/1.1\r\nHost: bot\r\n"
        data += b"".join(f + b"\r\n" for f in fields) + b"Content-Length: 2\r\n\r\nhi"
        got = _request_outcome(request_now, data)
        assert got == _request_outcome(before, data), [len(fields), [len(f) for f in fields[:3]]]


# ---------------------------------------------------------------- tenant shares


def _share_state(shares: Any) -> Any:
    return {
        name: (t.held, dict(t.at), t.size, sorted(t.queued), len(t.ready))
        for name, t in sorted(shares._tenants.items())
    }


class _ShareRun:
    """One script of takes, waits, frees and give-ups on one Shares."""

    def __init__(self, module: Any) -> None:
        self.shares = module.Shares(per_bot=2, total=3)
        self.tickets: dict[int, Any] = {}
        self.waits: dict[int, asyncio.Future[Any]] = {}
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.trace: list[Any] = []

    async def enter(self, n: int, tenant: str, key: str) -> None:
        def start(wait: asyncio.Future[Any]) -> Any:
            self.waits[n] = wait
            return lambda: self.waits.pop(n, None)

        try:
            self.tickets[n] = await self.shares.enter(tenant, key, start)
        except LookupError:
            self.trace.append(("gave up", n))

    def step(self, n: int, op: str, tenant: str, key: str, which: int) -> None:
        tickets, waits = self.tickets, self.waits
        if op == "take":
            got = self.shares.take(tenant, key)
            if got is not None:
                tickets[n] = got
            self.trace.append((n, got is not None))
        elif op == "enter":
            self.tasks[n] = asyncio.get_running_loop().create_task(self.enter(n, tenant, key))
        elif op == "free" and tickets:
            tickets.pop(sorted(tickets)[which % len(tickets)]).free()
        elif op == "give up" and waits:
            wait = waits[sorted(waits)[which % len(waits)]]
            if not wait.done():
                wait.set_exception(LookupError())


async def _share_run(module: Any, ops: list[tuple[str, str, int, int]]) -> list[Any]:
    run = _ShareRun(module)
    for n, (op, tenant, key, which) in enumerate(ops):
        run.step(n, op, tenant, f"bot{key}", which)
        for _ in range(3):
            await asyncio.sleep(0)
        run.trace.append((n, sorted(run.tickets), _share_state(run.shares)))
    for task in run.tasks.values():
        task.cancel()
    await asyncio.gather(*run.tasks.values(), return_exceptions=True)
    return run.trace


def test_tenant_shares_give_places_back_as_before() -> None:
    before = pinned("9c27e15^", "gateway/tenant_share.py")
    rng = random.Random(20261207)
    for _ in range(200):
        ops = [
            (rng.choice(["take", "enter", "enter", "free", "free", "give up"]),
             rng.choice(["a", "b"]), rng.randrange(3), rng.randrange(10))
            for _ in range(rng.randrange(1, 40))
        ]  # fmt: skip
        assert asyncio.run(_share_run(share_now, ops)) == asyncio.run(_share_run(before, ops))
