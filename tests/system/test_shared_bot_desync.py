"""Desync between the gateway and a shared bot, on both traffic servers: what a hostile
client or bot does to one message must not reach the next message on that bot connection
(another tenant's: bots are shared by address), and a message reaches the bot at most once.

Regression guards from a red-team pass (redteam32) for cases the framing suites
(test_http_conformance, test_forwarding_attack, test_bot_out_of_turn) do not write out:

* a bodiless answer (204, 304) sent with a body that is itself a whole answer, in one
  write on a kept connection: the client gets the bodiless answer, the next message (of
  another tenant) its own;
* a ``Content-Length`` with leading zeros, a pipelined request behind it: the bot reads
  the same body, and the next request as a request;
* a kept connection the bot drops after reading the next message (as a bot whose idle
  timeout is shorter than the gateway's does): 502 and refunded, never sent again (the
  aiohttp path sent a GET again: fixed in gateway/egress.py);
* a pipelined message handed to aiohttp after routing (an ``https://`` bot): exactly its
  bytes are replayed, a request in its body stays a body.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from gateway.appkeys import PROXY, TRAFFIC_STATS
from gateway.unread import unread
from meter.accounts import projection
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit
from tests.support.rawbot import Answer
from tests.support.rawhttp import Closed, RawConn, Response
from tests.support.settings import HOST
from tests.support.shared_bot import FREE, PRICE, Shared, shared_bot

pytestmark = pytest.mark.usefixtures("traffic_server")

WS, OTHER = "dsyncone", "dsynctwo"
APP, VICTIM = f"{WS}_appa", f"{OTHER}_appb"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"


@pytest.fixture
async def shared(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Shared]:
    async with shared_bot(seeded_gateway, rclient, APP, VICTIM) as s:
        yield s


def get(app: str, tail: str, user: str = "u1", extra: str = "") -> bytes:
    return (
        f"GET /hooks/web/{app}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: {user}\r\n"
        f"{extra}\r\n"
    ).encode()


async def one(gw: Running, data: bytes) -> Response:
    async with RawConn.open(gw.url) as c:
        c.send(data)
        return await c.response()


BODILESS = {
    "204 with a length": b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n%b",
    "304 with a length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n%b",
    "204 chunked": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x\r\n%b\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", BODILESS, ids=list(BODILESS))
async def test_a_bodiless_answer_with_a_body_never_answers_the_next_message(
    shared: Shared, case: str
) -> None:
    shared.bot.answers["/a/nobody"] = Answer(BODILESS[case] % (len(EVIL), EVIL), keep=True)
    async with RawConn.open(shared.gw.url) as c:
        c.send(get(APP, "/nobody"))
        first = await c.response()
        c.send(get(APP, "/after"))  # the client's connection is in step
        after = await c.response()
    if case.startswith("204"):  # a 204 that declares a body: 502 (gateway.misframed)
        assert (first.status, first.is_problem) == (502, True), first.raw_head
    else:  # a 304 may carry its representation's length: passed on bodiless
        assert first.status == 304, first.raw_head
    assert b"EVIL" not in first.body
    assert "Transfer-Encoding" not in first.headers
    assert (after.status, after.body[:13]) == (200, b"GET /a/after "), after.body[:80]
    victim = await one(shared.gw, get(VICTIM, "/mine", "v1", "Connection: close\r\n"))
    assert (victim.status, victim.body[:12]) == (200, b"GET /b/mine "), victim.body[:80]
    assert [shared.bot.target(i) for i in range(3)] == [b"/a/nobody", b"/a/after", b"/b/mine"]


DECLARED = {
    "chunked": b"Transfer-Encoding: chunked\r\n",
    "length": b"Content-Length: 4\r\n",
    "zero length": b"Content-Length: 0\r\n",
}


@pytest.mark.parametrize("field", DECLARED, ids=list(DECLARED))
async def test_a_204_that_declares_a_body_is_502_and_refunded_on_both_servers(
    shared: Shared, field: str
) -> None:
    """RFC 9112 §6.1, RFC 9110 §8.6: a 204 never carries Transfer-Encoding or a length
    other than 0. Decided by its head alone (the announced body not sent, or not yet),
    the same on both servers: before, the fast path passed it on and aiohttp passed it or
    answered 502 by whether the body came in the same read (gateway.misframed)."""
    head = b"HTTP/1.1 204 No Content\r\n%b\r\n" % DECLARED[field]
    shared.bot.answers["/a/declared"] = Answer(head, keep=True)
    async with RawConn.open(shared.gw.url) as c:
        c.send(get(APP, "/declared"))
        first = await c.response()
        c.send(get(APP, "/after", extra="Connection: close\r\n"))
        after = await c.response()
    if field == "zero length":
        assert first.status == 204, first.raw_head
        assert await shared.spent() == 2
    else:
        assert (first.status, first.is_problem) == (502, True), first.raw_head
        assert await shared.spent() == 1  # refunded
    assert (after.status, after.body[:13]) == (200, b"GET /a/after "), after.body[:80]


async def test_a_length_with_leading_zeros_frames_the_same_body(shared: Shared) -> None:
    post = (
        f"POST /hooks/web/{APP}/zeros HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        "Content-Length: 00005\r\n\r\n"
    ).encode()
    async with RawConn.open(shared.gw.url) as c:
        c.send(post + b"hello" + get(APP, "/next", extra="Connection: close\r\n"))
        answers = await c.responses(2)
    assert [r.status for r in answers] == [200, 200]
    assert [shared.bot.target(i) for i in range(2)] == [b"/a/zeros", b"/a/next"]
    assert shared.bot.bodies[0] == b"hello"
    assert [int(v) for v in shared.bot.header_values("Content-Length", 0)] == [5]
    assert await shared.spent() == 2


async def test_a_kept_connection_dropped_under_a_message_is_502_refunded_never_resent(
    shared: Shared,
) -> None:
    shared.bot.answers["/a/dropped"] = Answer(b"")  # read, then the connection closed
    async with RawConn.open(shared.gw.url) as c:
        c.send(get(APP, "/warm"))
        assert (await c.response()).status == 200  # the bot connection is kept
        c.send(get(APP, "/dropped"))
        failed = await c.response()
        c.send(get(APP, "/again", extra="Connection: close\r\n"))
        again = await c.response()
    assert failed.status == 502, failed.raw_head
    assert failed.is_problem
    assert again.status == 200
    assert [shared.bot.target(i) for i in range(len(shared.bot.heads))] == [
        b"/a/warm",
        b"/a/dropped",
        b"/a/again",
    ]
    assert await shared.spent() == 2  # /dropped refunded


async def test_a_pipelined_message_handed_off_after_routing_replays_exactly_itself(
    shared: Shared, traffic_server: str
) -> None:
    """The middle of three pipelined messages is for an ``https://`` bot: the fast path
    routes it, then hands it to aiohttp by replaying its bytes and what followed. Its body
    is a request: replayed one byte long or short, it would reach the bot as one."""
    with socket.socket() as closed:
        closed.bind((HOST, 0))  # bound, never listening: a connection to it is refused
        tls = f"{WS}_appt"
        url = f"https://{HOST}:{closed.getsockname()[1]}"
        await projection.put_app(shared.rclient, tls, product="contact_center", upstream_url=url)
        inner = get(APP, "/smuggled").decode()
        post = (
            f"POST /hooks/web/{tls}/tls HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
            f"Content-Length: {len(inner)}\r\n\r\n{inner}"
        ).encode()
        async with RawConn.open(shared.gw.url) as c:
            c.send(get(APP, "/one") + post + get(APP, "/three", extra="Connection: close\r\n"))
            answers = await c.responses(3)
            assert await c.closed()
    assert [r.status for r in answers] == [200, 502, 200]
    assert [shared.bot.target(i) for i in range(len(shared.bot.heads))] == [b"/a/one", b"/a/three"]
    assert await shared.spent() == 2  # the refused connection refunded
    if traffic_server == "fast":  # /one here; the rest handed off after routing /tls
        stats = shared.gw.gateway.traffic[TRAFFIC_STATS]
        assert (stats.fast, stats.handed_off) == (1, 1)


# A framing field with whitespace before its colon: refused by a strict parser, read as
# that field by the lenient one both servers read a bot's answer with (aiohttp's client).
SPACED = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", SPACED, ids=list(SPACED))
async def test_no_field_name_reaches_the_client_with_whitespace_before_its_colon(
    shared: Shared, case: str
) -> None:
    """RFC 9112 §5.1: a proxy removes such whitespace before forwarding. Passed on, the
    client got ``Content-Length : 5`` beside the ``Transfer-Encoding: chunked`` the answer
    was re-framed with: two framings, for whatever reads the first leniently (a front
    proxy shared by tenants), the bot's body read as another answer."""
    shared.bot.answers["/a/spaced"] = Answer(SPACED[case], keep=True)
    async with RawConn.open(shared.gw.url) as c:
        c.send(get(APP, "/spaced"))
        resp = await c.response()
        c.send(get(APP, "/after", extra="Connection: close\r\n"))
        after = await c.response()
    assert (resp.status, resp.body) == (200, b"hello"), resp.raw_head
    names = [line.partition(b":")[0] for line in resp.raw_head.split(b"\r\n")[1:-2]]
    assert all(name == name.strip() for name in names), resp.raw_head
    framing = [n.lower() for n in names if n.lower() in (b"content-length", b"transfer-encoding")]
    assert len(framing) == 1, resp.raw_head  # one framing
    assert after.body.startswith(b"GET /a/after "), after.body[:80]


async def test_a_spaced_chunked_answer_cut_short_never_looks_whole(shared: Shared) -> None:
    shared.bot.answers["/a/cut"] = Answer(  # then the bot closes
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhel"
    )
    async with RawConn.open(shared.gw.url) as c:
        c.send(get(APP, "/cut"))
        with pytest.raises(Closed):
            await c.response()


@dataclass
class Stray:
    """A bot whose answer to ``.../first<n>`` is followed, ``yields`` loop passes later,
    by a stray answer ("EVIL"), its reading paused meanwhile: ``before[n]`` tells whether
    the stray was written before the gateway sent the next message on the connection."""

    yields: int = 0
    seen: list[bytes] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)
    before: dict[int, bool] = field(default_factory=dict)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fd = writer.get_extra_info("socket").fileno()
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"chunked" in head.lower():
                    await reader.readuntil(b"0\r\n\r\n")
                elif length := re.search(rb"(?i)content-length: *(\d+)", head):
                    await reader.readexactly(int(length[1]))
                path = head.split(b" ")[1]
                self.seen.append(path)
                first = b"/first" in path
                if first:
                    await self.hold.wait()
                    writer.transport.pause_reading()  # the next message waits in the socket
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(path), path))
                if first:
                    for _ in range(self.yields):
                        await asyncio.sleep(0)  # loop passes, not time
                    n = int(path.rsplit(b"first", 1)[1])
                    self.before[n] = not unread(fd)
                    writer.write(EVIL)
                    writer.transport.resume_reading()
                await writer.drain()
        writer.close()


def chunked(app: str, tail: str, user: str = "u1") -> bytes:
    """A POST with a chunked body: aiohttp forwards it on both servers (the fast path
    hands it over), through its client's connector (gateway.bot_connector)."""
    head = get(app, tail, user, "Transfer-Encoding: chunked\r\n").replace(b"GET", b"POST", 1)
    return head + b"2\r\nhi\r\n0\r\n\r\n"


@pytest.mark.parametrize("send", [get, chunked], ids=["plain", "chunked"])
async def test_a_stray_answer_waiting_unread_never_answers_the_next_message(
    seeded_gateway: SeededGateway, rclient: RedisClient, send: Callable[..., bytes]
) -> None:
    """A bot's stray answer that arrived after one answer ended, and before the next
    message (another user's, waiting for that connection) was sent on it, but that the
    loop had not read yet: that message got it for its own. A stray sent after the next
    message is indistinguishable from the bot's answer to it (any HTTP/1.1 client);
    before it, the connection is never used again (gateway.unread: the fast path's pool
    and aiohttp's connector, which forwards a chunked body on both servers; it reused it).
    The stray is written a number of loop passes after the answer, each number tried.
    aiohttp writes a body a step after it has the connection: a stray found there as the
    head would go out fails the message instead (502, never sent, refunded)."""
    bot = Stray()
    server = await asyncio.start_server(bot.serve, HOST, 0)
    url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    apps = {f"{WS}_appa": {"product": "contact_center", "upstream_url": url + "/a"},
            f"{WS}_appc": {"product": "contact_center", "upstream_url": url + "/c"}}  # fmt: skip
    got: dict[int, bytes] = {}
    try:
        async with seeded_gateway(WS, apps, free=FREE, upstream_connections_per_tenant_bot=1) as gw:
            waits = gw.gateway.traffic[PROXY].metrics.tenant_share_waits
            for n in range(8):
                bot.yields, bot.hold = n, asyncio.Event()
                async with RawConn.open(gw.url) as a, RawConn.open(gw.url) as c:
                    a.send(send(f"{WS}_appa", f"/first{n}"))
                    while not any(p.endswith(b"/first%d" % n) for p in bot.seen):  # noqa: ASYNC110
                        await asyncio.sleep(0.005)  # until the bot has it
                    waited = waits._value.get()
                    c.send(send(f"{WS}_appc", f"/second{n}", "u2"))
                    while waits._value.get() == waited:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)  # until it waits for the connection
                    bot.hold.set()
                    assert (await a.response()).body == b"/a/first%d" % n
                    got[n] = await c.response()
            spent = (FREE - await free_credit(rclient, WS)) // PRICE
    finally:
        server.close()
        await server.wait_closed()
    assert any(bot.before.values())  # some stray came before its next message
    for n, resp in got.items():
        if bot.before[n]:  # written before the message was sent: never its answer
            own = resp.body == b"/c/second%d" % n
            unsent = resp.is_problem and b"/c/second%d" % n not in bot.seen
            assert own or unsent, (n, resp.status, resp.body)
    assert spent == len(bot.seen)  # what the bot never got is refunded
