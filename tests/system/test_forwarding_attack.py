"""The forwarding boundary attacked from both sides, on both traffic servers: a hostile
client (what reaches the bot) and a hostile bot (what reaches the client).

A raw bot (tests/support/rawbot.py) records each request byte for byte and answers with
scripted bytes; the client is a raw socket (tests/support/rawhttp.py). Every case asserts
the safe behaviour: hop-by-hop headers never cross, the bot is never told a client address
or request the gateway did not see, no CR/LF/NUL reaches either side inside a field, the
client's framing survives whatever the bot sends, and a tail never leaves the bot's URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit, seed_self_loop
from tests.support.channel_keys import SECRET_KEY, hs256, set_secret
from tests.support.rawbot import Answer, RawBot, running_raw_bot
from tests.support.rawhttp import Closed, RawConn, Response

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "fwdatk"
APP = f"{WS}_app1"
FREE = 10_000_000  # $10
PATH = f"/hooks/web/{APP}"


@dataclass
class Edge:
    gw: Running
    bot: RawBot
    rclient: RedisClient

    async def send(self, data: bytes, n: int = 1) -> list[Response]:
        async with RawConn.open(self.gw.url) as c:
            c.send(data)
            return await c.responses(n)

    async def untouched(self) -> bool:
        return not self.bot.heads and await free_credit(self.rclient, WS) == FREE


@pytest.fixture
async def edge(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Edge]:
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            yield Edge(gw, bot, rclient)


def message(tail: str = "", extra: bytes = b"", body: bytes = b"{}", close: bool = True) -> bytes:
    """A billable POST for the app (``extra``: more CRLF-terminated header lines)."""
    head = (
        f"POST {PATH}{tail} HTTP/1.1\r\nHost: gw.example\r\nX-Channel-User-Id: u1\r\n"
        f"Content-Length: {len(body)}\r\n"
    ).encode()
    if close:
        head += b"Connection: close\r\n"
    return head + extra + b"\r\n" + body


def problem(resp: Response, status: int) -> str:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.is_problem, resp.raw_head
    code: str = orjson.loads(resp.body)["code"]
    return code


def clean_fields(head: bytes) -> None:
    """Every line of a head is one field: no CR, LF or NUL inside it."""
    assert head.endswith(b"\r\n\r\n")
    for line in head[:-4].split(b"\r\n"):
        assert not {13, 10, 0} & set(line), line


# ------------------------------------------------------------------ client -> bot: hop-by-hop

HOP_CASES = {
    "listed": (b"Connection: X-A\r\nX-A: 1\r\nX-B: 2\r\n", ["X-A"], ["X-B"]),
    "second Connection header": (
        b"Connection: keep-alive\r\nConnection: X-A\r\nX-A: 1\r\n",
        ["X-A"],
        [],
    ),
    "odd case, blanks, empty tokens": (
        b"Connection: , x-a ,,\tX-b , \r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n",
        ["X-A", "X-B"],
        ["X-C"],
    ),
    "fixed hop-by-hop": (
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nProxy-Foo: 1\r\n",
        ["Keep-Alive", "TE", "Trailer", "Proxy-Authorization", "Proxy-Connection", "Proxy-Foo"],
        [],
    ),
    "many tokens": (
        ("Connection: " + ", ".join(f"x-{i}" for i in range(300)) + "\r\n").encode()
        + b"X-7: 1\r\nX-299: 1\r\nX-300: 1\r\n",
        ["X-7", "X-299"],
        ["X-300"],
    ),
    "Content-Length listed": (b"Connection: Content-Length\r\n", [], ["Content-Length"]),
    "forwarding headers listed": (
        b"Connection: X-Forwarded-For, Via, X-Forwarded-Host, X-Forwarded-Proto\r\n"
        b"X-Forwarded-For: 10.9.9.9\r\nVia: 1.0 other\r\n",
        [],
        ["X-Forwarded-For", "Via", "X-Forwarded-Host", "X-Forwarded-Proto"],
    ),
}


@pytest.mark.parametrize("case", HOP_CASES, ids=list(HOP_CASES))
async def test_hop_by_hop_request_headers_never_reach_the_bot(edge: Edge, case: str) -> None:
    extra, gone, kept = HOP_CASES[case]
    (resp,) = await edge.send(message(extra=extra))
    assert resp.status == 200, resp.body[:300]
    bot = edge.bot
    clean_fields(bot.heads[-1])
    assert bot.bodies[-1] == b"{}"
    for name in ["Connection", *gone]:
        assert not bot.header_values(name), (name, bot.heads[-1])
    for name in kept:
        assert bot.header_values(name), (name, bot.heads[-1])
    assert bot.header_values("Host") == [bot.url.removeprefix("http://").encode()]
    assert bot.header_values("X-Forwarded-For")[-1].endswith(b"127.0.0.1")
    assert bot.header_values("Via")[-1].endswith(b"1.1 creditgate")
    if case == "forwarding headers listed":
        assert bot.header_values("X-Forwarded-For") == [b"10.9.9.9, 127.0.0.1"]
        assert bot.header_values("Via") == [b"1.0 other, 1.1 creditgate"]
        assert bot.header_values("X-Forwarded-Host") == [b"gw.example"]
        assert bot.header_values("X-Forwarded-Proto") == [b"http"]


# The headers the gateway decides by (gateway.http_rules.SINGLE): listed in Connection,
# the gateway would decide by a value the bot never sees (an Idempotency-Key hidden from
# the bot lets a client have each redelivery answered anew for one charge).
DECIDED = {
    "user": b"Connection: X-Channel-User-Id\r\n",
    "idempotency key": b"Connection: keep-alive, idempotency-KEY \r\nIdempotency-Key: k1\r\n",
    "request id": b"Connection: X-Request-Id\r\nX-Request-Id: r1\r\n",
    "authorization": b"Connection: Authorization\r\nAuthorization: Bearer x\r\n",
    "content type": b"Connection: x, Content-Type,\r\nContent-Type: application/json\r\n",
    "slack signature": b"Connection: close\r\nConnection: X-Slack-Signature\r\n",
    "host": b"Connection: HOST\r\n",
    # Read as text (UTF-8), a token's strip() and lower() are Unicode's: NBSP, NEL, an
    # ideographic space around a name, or a Kelvin sign for its k, still name the header
    # that forwarding drops. The fast path read them as Latin-1 and let them by: the bot
    # was sent no key for a message the gateway charged by one.
    "user, NBSP after": b"Connection: X-Channel-User-Id\xc2\xa0\r\n",
    "idempotency key, Kelvin sign": (
        b"Connection: Idempotency-\xe2\x84\xaaey\r\nIdempotency-Key: k1\r\n"
    ),
    "request id, NEL before": b"Connection: \xc2\x85X-Request-Id\r\nX-Request-Id: r1\r\n",
    "user, ideographic space": b"Connection: keep-alive, x-channel-user-id\xe3\x80\x80\r\n",
}


@pytest.mark.parametrize("case", DECIDED, ids=list(DECIDED))
async def test_connection_cannot_hide_a_header_the_gateway_decides_by(
    edge: Edge, case: str
) -> None:
    (resp,) = await edge.send(message(extra=DECIDED[case]))
    assert problem(resp, 400) == "invalid_connection_header"
    assert await edge.untouched()


# ------------------------------------------------------------------ client -> bot: who and which


async def test_the_bot_is_never_told_a_client_address_the_gateway_did_not_see(
    edge: Edge,
) -> None:
    spoof = (
        b"X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\n"
    )
    (resp,) = await edge.send(message(extra=spoof))
    assert resp.status == 200
    bot = edge.bot
    # Appended to (RFC 7239 and the de-facto XFF): the last entry is the peer.
    assert bot.header_values("X-Forwarded-For") == [b"6.6.6.6, 127.0.0.1"]
    assert bot.header_values("Forwarded") == [b"for=6.6.6.6;proto=https, for=127.0.0.1"]
    assert bot.header_values("X-Real-IP") == [b"127.0.0.1"]  # one address: the peer
    assert bot.header_values("X-Forwarded-Proto") == [b"http"]
    assert bot.header_values("X-Forwarded-Host") == [b"gw.example"]
    # Without them, nothing the client did not send is invented but what the gateway sets.
    (resp,) = await edge.send(message())
    assert bot.header_values("X-Forwarded-For") == [b"127.0.0.1"]
    assert not bot.header_values("Forwarded")
    assert not bot.header_values("X-Real-IP")


@pytest.mark.parametrize("how", ["empty Host", "HTTP/1.0, no Host"])
async def test_a_clients_forwarded_host_never_stands_for_the_gateways(edge: Edge, how: str) -> None:
    # The gateway sets X-Forwarded-Host from the Host it was sent; with none to tell, a
    # client's own passed on as if the gateway had set it (a bot building links from it
    # would point them at the client's choice).
    data = message(extra=b"X-Forwarded-Host: bank.example\r\n")
    if how == "empty Host":
        data = data.replace(b"Host: gw.example\r\n", b"Host:\r\n")
    else:
        data = data.replace(b" HTTP/1.1\r\nHost: gw.example\r\n", b" HTTP/1.0\r\n")
    (resp,) = await edge.send(data)
    assert resp.status == 200, resp.body[:300]
    assert edge.bot.header_values("X-Forwarded-Host") == []
    assert edge.bot.header_values("X-Forwarded-For") == [b"127.0.0.1"]


async def test_a_chain_sent_as_several_lines_reaches_the_bot_whole(edge: Edge) -> None:
    # Several lines of one list header are one comma-joined list (RFC 9110 §5.3): keeping
    # only the first line would drop the rest of the chain, and with it the proxies the
    # bot may trust to name the client.
    lines = (
        b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n"
        b"Forwarded: for=10.0.0.1\r\nForwarded: for=10.0.0.2\r\n"
        b"Via: 1.0 edge-a\r\nVia: 1.1 edge-b\r\n"
    )
    (resp,) = await edge.send(message(extra=lines))
    assert resp.status == 200, resp.body[:300]
    bot = edge.bot
    assert bot.header_values("X-Forwarded-For") == [b"10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
    assert bot.header_values("Forwarded") == [b"for=10.0.0.1, for=10.0.0.2, for=127.0.0.1"]
    assert bot.header_values("Via") == [b"1.0 edge-a, 1.1 edge-b, 1.1 creditgate"]


async def test_an_empty_first_line_never_hides_a_spoofed_entry(edge: Edge) -> None:
    # Reading the first line alone, an empty one meant "no Forwarded sent": the client's
    # lines then went through untouched, and the last entry the bot read was the spoof.
    spoof = (
        b"Forwarded:\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For:\r\nX-Forwarded-For: 6.6.6.6\r\n"
    )
    (resp,) = await edge.send(message(extra=spoof))
    assert resp.status == 200, resp.body[:300]
    bot = edge.bot
    [fwd] = bot.header_values("Forwarded")
    assert fwd.endswith(b"for=6.6.6.6, for=127.0.0.1"), fwd
    [xff] = bot.header_values("X-Forwarded-For")
    assert xff.endswith(b"6.6.6.6, 127.0.0.1"), xff


def chain_value(name: bytes, size: int) -> bytes:
    """A value of list header ``name``, ``size`` bytes of entries."""
    entry = {b"X-Forwarded-For": b"10.0.0.1", b"Forwarded": b"for=10.0.0.1"}.get(name, b"1.1 e")
    value = b", ".join([entry] * (size // (len(entry) + 2)))
    return value + b"x" * (size - len(value))  # the last entry padded to the exact size


def chain_lines(name: bytes, lines: int, size: int) -> bytes:
    return (name + b": " + chain_value(name, size) + b"\r\n") * lines


@pytest.mark.parametrize("name", [b"X-Forwarded-For", b"Forwarded", b"Via"])
async def test_a_chain_too_long_once_joined_is_refused_before_admission(
    edge: Edge, name: bytes
) -> None:
    # Each line passes every per-line limit; joined, they would reach the bot as one line
    # of 12 KB, longer than any line the gateway takes and than a bot's server takes
    # (nginx, aiohttp: 8 KiB): the client's message would fail there, charged.
    (resp,) = await edge.send(message(extra=chain_lines(name, 3, 4000)))
    assert problem(resp, 431) == "header_fields_too_large"
    assert await edge.untouched()


async def test_a_chain_under_the_limit_once_joined_reaches_the_bot_as_one_line(
    edge: Edge,
) -> None:
    (resp,) = await edge.send(message(extra=chain_lines(b"X-Forwarded-For", 2, 3990)))
    assert resp.status == 200, resp.body[:300]
    line = chain_value(b"X-Forwarded-For", 3990)
    assert edge.bot.header_values("X-Forwarded-For") == [line + b", " + line + b", 127.0.0.1"]


async def test_whitespace_after_a_value_is_not_part_of_it(edge: Edge) -> None:
    # RFC 9110 §5.5. llhttp strips it before a value only: the fast path metered "alice"
    # and "alice " as two users (two sessions) and "k1 " as another key than "k1", where
    # aiohttp, and the bot's own server, see one.
    async with RawConn.open(edge.gw.url) as c:
        for user, key in ((b"alice", b"k1"), (b"alice ", b"k1 "), (b"alice \t", b"k1\t")):
            extra = b"Idempotency-Key: " + key + b"\r\n"
            head = message(extra=extra, close=False).replace(b"User-Id: u1", b"User-Id: " + user)
            c.send(head)
            resp = await c.response()
            assert resp.status == 200, resp.body[:300]
    bot = edge.bot
    for i in range(3):
        lines = bot.head_lines(i)
        assert b"X-Channel-User-Id: alice" in lines, lines
        assert b"Idempotency-Key: k1" in lines, lines
    assert await free_credit(edge.rclient, WS) == FREE - 200_000  # one session: one user


@pytest.mark.parametrize(
    "name", ["User-Agent", "Max-Forwards", "Content-Location", "Content-Range", "ETag", "Server"]
)
async def test_a_header_aiohttp_takes_once_is_refused_twice_on_both_servers(
    edge: Edge, name: str
) -> None:
    # aiohttp's parser refuses these given twice; the fast path served them, charged.
    twice = f"{name}: a\r\n{name}: b\r\n".encode()
    (resp,) = await edge.send(message(extra=twice))
    assert problem(resp, 400) == "malformed_request"
    assert await edge.untouched()


async def test_request_ids_are_the_clients_or_fresh_per_request(edge: Edge) -> None:
    await edge.send(message(extra=b"X-Request-Id: mine\r\n"))
    assert edge.bot.header_values("X-Request-Id") == [b"mine"]
    await edge.send(message() + message(close=False), n=1)
    async with RawConn.open(edge.gw.url) as c:
        c.send(message(close=False) + message(close=False) + message())
        assert [r.status for r in await c.responses(3)] == [200, 200, 200]
    ids = [edge.bot.header_values("X-Request-Id", i) for i in range(1, len(edge.bot.heads))]
    assert all(len(i) == 1 and i[0] for i in ids), ids
    assert len({i[0] for i in ids}) == len(ids)  # never reused across requests
    (resp,) = await edge.send(message(extra=b"X-Request-Id: a\r\nX-Request-Id: b\r\n"))
    problem(resp, 400)  # two: the gateway would decide by one, the bot might read the other


async def test_an_expectation_is_met_once_and_the_body_arrives(edge: Edge) -> None:
    async with RawConn.open(edge.gw.url) as c:
        c.send(message("/x", extra=b"Expect: 100-continue\r\n")[:-2])  # the body waits
        assert (await c.response()).status == 100  # asked for once the body is read
        c.send(b"{}")
        resp = await c.response()
    assert resp.status == 200, resp.body[:300]
    assert edge.bot.bodies == [b"{}"]


VIA_TRICKS = {
    "listed in Connection": b"Connection: Via\r\nVia: 1.1 other\r\n",
    "no blanks, commas": b"Via: ,,1.0 a,1.1 b,,\r\n",
    "odd case": b"vIA: 1.1 other\r\n",
}


@pytest.mark.parametrize("case", VIA_TRICKS, ids=list(VIA_TRICKS))
async def test_via_tricks_do_not_defeat_the_loop_check(
    seeded_gateway: SeededGateway, rclient: RedisClient, case: str
) -> None:
    apps = {APP: {"product": "automation"}}
    async with seeded_gateway(WS, apps, free=FREE) as gw:
        # The app's bot is the gateway itself: the second pass must be refused 508.
        await seed_self_loop(rclient, gw, WS, APP, FREE)
        async with RawConn.open(gw.url) as c:
            c.send(message(extra=VIA_TRICKS[case]))
            resp = await c.response()
    # The second pass answers 508; the first passes on a failure (502) or the 508 itself.
    assert resp.status in (502, 508), resp.body[:300]
    assert await free_credit(rclient, WS) == FREE


# ------------------------------------------------------------------ client -> bot: injection

INJECTIONS = {
    "obs-fold": b"X-A: one\r\n two\r\n",
    "NUL": b"X-A: a\0b\r\n",
    "bare CR": b"X-A: a\rb\r\n",
    "bare LF in value": b"X-A: a\nX-Channel-User-Id: victim\r\n",
    "percent-encoded CRLF": b"X-A: a%0d%0aX-Injected: 1\r\n",
    "non-UTF-8": b"X-A: \xff\xfe\xc3(\r\n",
    "header name with space": b"X -A: 1\r\n",
}


@pytest.mark.parametrize("case", INJECTIONS, ids=list(INJECTIONS))
async def test_no_field_injection_reaches_the_bot(edge: Edge, case: str) -> None:
    (resp,) = await edge.send(message(extra=INJECTIONS[case]))
    assert resp.status < 500, (resp.status, resp.body[:300])
    if resp.status != 200:
        problem(resp, resp.status)
        assert await edge.untouched()
        return
    head = edge.bot.heads[-1]
    clean_fields(head)
    assert not edge.bot.header_values("X-Injected")
    assert edge.bot.header_values("X-Channel-User-Id") == [b"u1"]
    if case == "non-UTF-8":  # dropped by both servers (test_a_field_not_utf8_is_dropped)
        assert edge.bot.header_values("X-A") == []
    if case == "percent-encoded CRLF":
        assert edge.bot.header_values("X-A") == [b"a%0d%0aX-Injected: 1"]


NOT_UTF8 = (
    b"X-A: caf\xe9\r\n"  # Latin-1
    b"X-B: caf\xc3\xa9\r\n"  # UTF-8: passes byte for byte
    b"X-C: \xed\xa0\x80\r\n"  # a surrogate's code in UTF-8's form: not UTF-8
    b"X-Forwarded-For: 10.1.1.1\xff\r\nX-Forwarded-For: 10.2.2.2\r\n"
    b"Via: 1.0 p\xff\r\nX-Request-Id: r\xff\r\n"
    b"Idempotency-Key: k1\r\n"  # the key (without, none: test_a_request_id_not_utf8_is_no_key)
)


@pytest.mark.parametrize("version", ["1.1", "1.0"])  # 1.0: the fast path hands it to aiohttp
async def test_a_field_not_utf8_is_dropped(edge: Edge, version: str) -> None:
    """aiohttp's writer leaves out the bytes that are not UTF-8 (a value the client never
    sent: ``caf\\xe9`` reached the bot as ``caf``), the fast path wrote them: now both drop
    the field, and what the gateway writes from such a value (the forwarding chain, a
    request id) leaves it out."""
    data = message(extra=NOT_UTF8).replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode(), 1)
    (resp,) = await edge.send(data)
    assert resp.status == 200, (resp.status, resp.body[:300])
    head = edge.bot.heads[-1]
    clean_fields(head)
    assert edge.bot.header_values("X-A") == []
    assert edge.bot.header_values("X-B") == [b"caf\xc3\xa9"]
    assert edge.bot.header_values("X-C") == []
    assert edge.bot.header_values("X-Forwarded-For") == [b"10.2.2.2, 127.0.0.1"]
    assert edge.bot.header_values("Via") == [b"1.1 creditgate"]
    (rid,) = edge.bot.header_values("X-Request-Id")
    assert rid.isascii(), head
    assert rid != b"r"
    head.decode()  # all of it UTF-8


@pytest.mark.parametrize("version", ["1.1", "1.0"])  # 1.0: the fast path hands it to aiohttp
async def test_a_request_id_not_utf8_is_no_key(edge: Edge, version: str) -> None:
    """Without an Idempotency-Key the request id is the message's key (gateway.channels);
    one that is not UTF-8 is replaced towards the bot, and is no key either: the message
    is metered as one with no request id (it was 400 invalid_channel_user)."""
    data = message(extra=b"X-Request-Id: r\xe9q\r\n")
    data = data.replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode(), 1)
    (resp,) = await edge.send(data)
    assert resp.status == 200, (resp.status, resp.body[:300])
    (rid,) = edge.bot.header_values("X-Request-Id")
    assert rid.isascii(), rid
    assert await free_credit(edge.rclient, WS) < FREE  # charged
    (resp,) = await edge.send(data)  # no key: a message of its own, not a duplicate
    assert resp.status == 200, (resp.status, resp.body[:300])
    assert len(edge.bot.heads) == 2


# ------------------------------------------------------------------ bot -> client: framing

OK = b"HTTP/1.1 200 OK\r\n"
HELLO = b"Content-Length: 5\r\n\r\nhello"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!"  # a response smuggled behind one

# Answers no client may get as they are: 502, the message refunded.
REFUSED_ANSWERS = {
    "length and chunked": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n" + EVIL,
    "two lengths": OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "one length twice": OK + b"Content-Length: 5\r\n" + HELLO,
    "a length list": OK + b"Content-Length: 5, 5\r\n\r\nhello",
    "NUL in a value": OK + b"X-A: a\0b\r\n" + HELLO,
    "a 101 nobody asked for": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n"
    b"Connection: Upgrade\r\n\r\n" + EVIL,
    "status 099": b"HTTP/1.1 099 Weird\r\n" + HELLO,
    "a 100 KB field": OK + b"X-H: " + b"v" * 100_000 + b"\r\n" + HELLO,
    "a 10 KB reason": b"HTTP/1.1 200 " + b"K" * 10_000 + b"\r\n" + HELLO,
    "2000 fields": OK + b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 100) for i in range(2000)) + HELLO,
}


@pytest.mark.parametrize("case", REFUSED_ANSWERS, ids=list(REFUSED_ANSWERS))
async def test_a_bot_cannot_break_the_clients_framing(edge: Edge, case: str) -> None:
    edge.bot.answers["/b/x"] = Answer(REFUSED_ANSWERS[case])
    async with RawConn.open(edge.gw.url) as c:
        c.send(message("/x", close=False))
        assert problem(await c.response(), 502) == "upstream_unavailable"
        c.send(message("/y"))  # the client's connection is still in step
        resp = await c.response()
    assert resp.status == 200
    assert resp.body == edge.bot.heads[-1]
    assert len(edge.bot.heads) == 2
    assert await free_credit(edge.rclient, WS) < FREE  # the second message stands
    edge.bot.answers["/b/z"] = Answer(REFUSED_ANSWERS[case])
    spent = await free_credit(edge.rclient, WS)
    (resp,) = await edge.send(message("/z"))
    assert resp.status == 502
    assert await free_credit(edge.rclient, WS) == spent  # refunded: the bot did not answer


async def test_an_endless_head_is_refused_not_buffered(edge: Edge) -> None:
    # 9 MB of one header value that never ends, the connection left open: answered 502
    # at once (a bound on what is buffered), not when the read timeout fires.
    edge.bot.answers["/b/x"] = Answer(OK + b"X-H: " + b"v" * 9_000_000, keep=True)
    (resp,) = await edge.send(message("/x"))
    assert problem(resp, 502) == "upstream_unavailable"


# Answers that pass, re-framed for the client: exactly "hello", the connection in step.
PASSED_ANSWERS = {
    "gzip, chunked": OK + b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked, gzip: until the close": OK + b"Transfer-Encoding: chunked, gzip\r\n\r\nhello",
    "gzip: until the close": OK + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "no length: until the close": OK + b"\r\nhello",
    "a response behind the answer": OK + HELLO + EVIL,
    "a 1xx storm": b"HTTP/1.1 100 Continue\r\n\r\n" * 300
    + b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    + OK
    + HELLO,
    "HTTP/1.0": b"HTTP/1.0 200 OK\r\n" + HELLO,
    "Connection lists the length": OK + b"Connection: Content-Length\r\n" + HELLO,
}


@pytest.mark.parametrize("case", PASSED_ANSWERS, ids=list(PASSED_ANSWERS))
async def test_odd_but_whole_answers_reach_the_client_whole(edge: Edge, case: str) -> None:
    edge.bot.answers["/b/x"] = Answer(PASSED_ANSWERS[case])
    async with RawConn.open(edge.gw.url) as c:
        c.send(message("/x", close=False))
        resp = await c.response()
        assert (resp.status, resp.body) == (200, b"hello"), resp.raw_head
        assert "Transfer-Encoding" not in resp.headers or resp.headers["Transfer-Encoding"] == (
            "chunked"
        )
        c.send(message("/y"))
        resp = await c.response()
    assert resp.body == edge.bot.heads[-1]  # its own answer, never one smuggled earlier
    assert b"evil!" not in resp.body


CUT_SHORT = {
    "short of its length": OK + b"Content-Length: 10\r\n\r\nhello",
    "short of a length Connection lists": OK
    + b"Connection: Content-Length\r\nContent-Length: 10\r\n\r\nhello",
    "chunked, cut in a chunk": OK + b"Transfer-Encoding: chunked\r\n\r\na\r\nhello",
    "chunked, no last chunk": OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
}


@pytest.mark.parametrize("case", CUT_SHORT, ids=list(CUT_SHORT))
async def test_an_answer_cut_short_never_looks_whole(edge: Edge, case: str) -> None:
    edge.bot.answers["/b/x"] = Answer(CUT_SHORT[case])  # then the bot closes
    async with RawConn.open(edge.gw.url) as c:
        c.send(message("/x"))
        with pytest.raises(Closed):
            await c.response()


async def test_the_bots_end_to_end_headers_pass_and_its_hop_by_hop_do_not(edge: Edge) -> None:
    edge.bot.answers["/b/x"] = Answer(
        OK + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nServer: botsrv\r\n"
        b"Date: Mon, 01 Jan 2001 00:00:00 GMT\r\nConnection: X-S, close\r\nX-S: 1\r\n"
        b"Keep-Alive: timeout=1\r\nProxy-X: 1\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
        b"X-Kept: 1\r\n" + HELLO
    )
    async with RawConn.open(edge.gw.url) as c:
        c.send(message("/x", close=False))
        resp = await c.response()
        c.send(message("/y"))  # the bot's Connection: close is its own hop
        assert (await c.response()).status == 200
    h = resp.headers
    assert h.getall("Set-Cookie") == ["a=1", "b=2"]
    assert h.getall("Server") == ["botsrv"]
    assert h.getall("Date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]
    assert h.getall("X-Kept") == ["1"]
    for name in ("Connection", "X-S", "Keep-Alive", "Proxy-X", "Trailer", "Upgrade"):
        assert name not in h, resp.raw_head
    clean_fields(resp.raw_head)


# ------------------------------------------------------------------ the tail and the query

DOT_TAILS = [
    "/a/../x", "/a/%2e%2e/x", "/a/%2E%2e/x", "/a/.%2e/x", "/a/%2e./x", "/a/..%2fx",
    "/a%2f..%2fx", "/a\\..\\x", "/a/%5c..%5cx", "/.", "/%2e", "/a#/../x", "/..;/x",
    "/a/.;p=1/x", "/a/%2e%2e%3b/x",
]  # fmt: skip


@pytest.mark.parametrize("tail", DOT_TAILS)
async def test_a_tail_never_climbs_out_of_the_bots_url(edge: Edge, tail: str) -> None:
    (resp,) = await edge.send(message(tail))
    assert problem(resp, 400) == "invalid_path"
    assert await edge.untouched()


KEPT_TAILS = {
    "/a/.../x": b"/b/a/.../x",
    "/a/%252e%252e/x": b"/b/a/%252e%252e/x",  # decoded once it is "%2e%2e", not ".."
    "//evil.example/x": b"/b//evil.example/x",
    "/@evil.example/x": b"/b/@evil.example/x",
    "/a%3Fq=1": b"/b/a%3Fq=1",
    "/a%23b": b"/b/a%23b",
    "/a;b=../x": b"/b/a;b=../x",
    "/%00": b"/b/%00",
    "/%ff": b"/b/%ff",
    "/a#frag": b"/b/a",
    "/a?x=1?y=2#f": b"/b/a?x=1?y=2",
    "/" + "a" * 5000: b"/b/" + b"a" * 5000,
}


@pytest.mark.parametrize("tail", KEPT_TAILS, ids=[t[:20] for t in KEPT_TAILS])
async def test_a_tail_reaches_the_bot_exactly_and_only_the_bot(edge: Edge, tail: str) -> None:
    (resp,) = await edge.send(message(tail))
    assert resp.status == 200, resp.body[:300]
    bot = edge.bot  # the request arrived here: the tail did not change the host
    assert bot.target() == KEPT_TAILS[tail]
    assert bot.header_values("Host") == [bot.url.removeprefix("http://").encode()]
    clean_fields(bot.heads[-1])


async def test_the_channel_credential_is_not_the_bots(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        async with seeded_gateway(
            WS, apps, free=FREE, secret_key=SECRET_KEY, channel_secret_max_age_s=0.001
        ) as gw:
            await set_secret(rclient, gw.gateway.settings, APP, "web")
            auth = f"Authorization: Bearer {hs256('alice')}\r\n".encode()
            query = "?a=1&token=x&%74oken=y&tok%65n=z&b=2&TOKEN=kept"
            async with RawConn.open(gw.url) as c:
                c.send(message("/t" + query, extra=auth))
                resp = await c.response()
    assert resp.status == 200, resp.body[:300]
    assert bot.target() == b"/b/t?a=1&b=2&TOKEN=kept"
    assert bot.header_values("X-Channel-User-Id") == [b"alice"]  # the verified user, not u1
