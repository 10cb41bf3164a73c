"""HTTP/1.1 conformance and request smuggling at the traffic port, against every traffic
server the settings offer (``traffic_server``), each run as ``creditgate serve`` with a
real counting bot behind it and a real Redis, metering on.

Every case asserts the security property, not only a status: a request is never
understood one way by the gateway and another by the bot, and nothing reaches the bot
that was not charged. Each test gets its own workspace and app (``contact_center``: every
admitted message costs one cent), so the charges in Redis, the bot's calls for that app
and the responses on the wire are compared exactly:

* **framing** (RFC 9112 §6): Content-Length with Transfer-Encoding, duplicate or
  malformed Content-Length, obfuscated Transfer-Encoding: 400 problem+json, the
  connection closed, nothing charged, and the request hidden in the body never reaches
  the bot; chunk extensions and trailers are ignored, malformed chunks refused;
* **connections**: pipelined requests answered in order, each charged once;
  ``Expect: 100-continue`` (and a refusal instead of a 100); HTTP/1.0 with and without
  keep-alive; a half-closed client still gets its answer;
* **limits**: oversized request line, header or header count is a 4xx problem+json that
  echoes nothing; slow headers and stalled bodies are cut off (waited for by observing
  the close, never timed);
* **syntax**: bare LF, NUL/CR in values, obs-fold, absolute-form targets, Host missing,
  duplicated or invalid, HTTP versions other than 1.0/1.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import typing
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from config import Settings
from meter.accounts import projection
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from tests.support.bot import Bot, Call, free_credit, running_bot
from tests.support.rawhttp import RawConn, Response
from tests.support.servers import RedisServer
from tests.support.serving import Served, creditgate_serve
from tests.support.settings import make_settings

FREE = 10_000_000  # $10
PRICE = 10_000  # a contact_center message: $0.01
SECRET = "sk_live_MUST_NOT_ECHO"
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
MAX_BODY = 256 * 1024


def traffic_servers() -> list[str]:
    """The traffic servers this build offers: the values of ``Settings.traffic_server``,
    or only today's (aiohttp) where that setting does not exist yet."""
    field = Settings.model_fields.get("traffic_server")
    if field is None:
        return ["aiohttp"]
    return [str(v) for v in typing.get_args(field.annotation)] or [str(field.default)]


def _server_settings(server: str) -> dict[str, object]:
    settings: dict[str, object] = {
        "workers": 1,
        "header_timeout_s": HEADER_TIMEOUT_S,
        "max_body_bytes": MAX_BODY,
        # After an answer given before the body's end (408, 413, a refusal instead of a
        # 100) the rest is read and dropped for this long, then the connection closes:
        # the stalled-body and refusal tests wait for that close (10 s by default). A
        # client still sending, as in the 413 test, has as long as a head has here.
        "body_linger_s": HEADER_TIMEOUT_S,
    }
    if "body_timeout_s" in Settings.model_fields:
        settings["body_timeout_s"] = BODY_TIMEOUT_S
    if "traffic_server" in Settings.model_fields:
        settings["traffic_server"] = server
    return settings


@dataclass
class Edge:
    """One served gateway (of one traffic server) and the bot behind it."""

    server: str
    served: Served
    bot: Bot
    redis: RedisClient
    settings: Settings


@pytest.fixture(scope="module", params=traffic_servers())
async def edge(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Edge]:
    if not _built(request.param):
        pytest.skip(f"traffic_server={request.param} is not built yet")
    if not redis_server.running:
        redis_server.start()
    tmp = tmp_path_factory.mktemp(f"conformance-{request.param}")
    client = connect(redis_server.url)
    try:
        async with (
            running_bot() as bot,
            creditgate_serve(redis_server.url, tmp, **_server_settings(request.param)) as sv,
        ):
            yield Edge(request.param, sv, bot, client, make_settings(redis_server.url, tmp))
    finally:
        await client.aclose()


def _built(server: str) -> bool:
    """Whether this build serves ``server`` (the setting may come before the code)."""
    return server == "aiohttp" or importlib.util.find_spec(f"gateway.{server}path") is not None


_n = itertools.count(1)


@dataclass
class Site:
    """A fresh workspace with one app behind ``edge``: its path, charges and bot calls."""

    edge: Edge
    ws: str
    app: str
    mark: str  # the bot path every forwarded request of this app starts with

    @property
    def url(self) -> str:
        return self.edge.served.traffic

    @property
    def path(self) -> str:
        return f"/hooks/web/{self.app}"

    def calls(self) -> list[Call]:
        return [c for c in self.edge.bot.calls if c.path_qs.startswith(self.mark)]

    def paths(self) -> list[str]:
        return [c.path_qs[len(self.mark) :] for c in self.calls()]

    async def charged(self) -> int:
        spent = FREE - await free_credit(self.edge.redis, self.ws)
        assert spent % PRICE == 0, spent
        return spent // PRICE

    async def reserved(self) -> int:
        """Charges not (yet) confirmed as forwarded: the sweeper refunds them."""
        return int(await self.edge.redis.zcard(keys.reservations_key(self.ws)))

    async def all_unforwarded(self) -> bool:
        """Whether every charge is still reserved (never confirmed as forwarded), read in
        one transaction: an admission may land while the test looks."""
        async with self.edge.redis.pipeline(transaction=True) as pipe:
            pipe.hget(keys.ws_key(self.ws), "free")
            pipe.zcard(keys.reservations_key(self.ws))
            free, reserved = await pipe.execute()
        spent = FREE - int(free or 0)
        return spent == int(reserved) * PRICE

    async def books(self) -> tuple[int, list[str]]:
        """(messages charged, paths the bot got)."""
        return await self.charged(), self.paths()

    async def balanced(self, within_s: float = 30.0) -> bool:
        """Every charge but those never forwarded matches one bot call."""
        for _ in range(int(within_s / 0.05)):
            if await self.charged() - await self.reserved() == len(self.calls()):
                return True
            await asyncio.sleep(0.05)
        return False


@pytest.fixture
async def site(edge: Edge) -> Site:
    ws = "cf" + uuid.uuid4().hex[:12]
    app = f"{ws}_req1"
    mark = f"/t{next(_n)}"
    await seed(
        edge.redis,
        edge.settings,
        ws,
        {app: {"product": "contact_center", "upstream_url": edge.bot.url + mark}},
        free=FREE,
    )
    return Site(edge, ws, app, mark)


def known_gap(request: pytest.FixtureRequest, site: Site, servers: dict[str, str]) -> None:
    """Mark this case as an open hole of the named traffic servers (strict: it must
    fail there, so a fix shows up as an unexpected pass)."""
    reason = servers.get(site.edge.server)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def req(
    site: Site,
    tail: str,
    *,
    method: str = "POST",
    body: bytes = b"",
    headers: str = "",
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A well-formed request for ``site`` (``headers``: extra CRLF-terminated lines)."""
    head = f"{method} {site.path}{tail} {version}\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
    if length and (body or method == "POST"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + headers.encode() + b"\r\n" + body


def echoed(resp: Response) -> dict[str, typing.Any]:
    """The bot's echo of the request it got."""
    assert resp.status == 200, (resp.status, resp.body[:300])
    data: dict[str, typing.Any] = orjson.loads(resp.body)
    return data


async def answered(site: Site, *answers: tuple[Response, str]) -> None:
    """Each response is the bot's echo of its path, and exactly those paths were
    forwarded and charged, in that order."""
    for resp, path in answers:
        assert echoed(resp)["path"].endswith(path)
    assert await site.books() == (len(answers), [path for _, path in answers])


def assert_problem(resp: Response, status: int | None = None) -> None:
    if status is None:
        assert 400 <= resp.status < 500, (resp.status, resp.body[:300])
    else:
        assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.is_problem, resp.raw_head
    assert orjson.loads(resp.body)["code"]


@contextlib.asynccontextmanager
async def conn(site: Site) -> AsyncIterator[RawConn]:
    async with RawConn.open(site.url) as c:
        yield c


async def refused_and_closed(site: Site, data: bytes) -> Response:
    """Send ``data`` on a fresh connection: one 400 problem+json, then the server closes
    without a second answer; nothing was charged or forwarded."""
    async with conn(site) as c:
        c.send(data)
        resp = await c.response()
        assert_problem(resp, 400)
        rest = await c.rest()
        assert b"HTTP/1." not in rest, rest[:300]  # no answer to what followed
        assert await c.closed()
    assert await site.books() == (0, [])
    return resp


# ------------------------------------------------------------------ framing: smuggling


def smuggled(site: Site) -> str:
    """A complete request hidden in a body: it must never reach the bot as a request."""
    return f"GET {site.path}/smuggled HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u2\r\n\r\n"


def _front(site: Site, fields: str, body: str) -> bytes:
    """A POST to /front with these header lines (each ending in CRLF), then ``body``."""
    head = f"POST {site.path}/front HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
    return f"{head}{fields}\r\n{body}".encode()


def _cl_te(te: str) -> typing.Callable[[Site], bytes]:
    def build(site: Site) -> bytes:
        body = "0\r\n\r\n" + smuggled(site)
        return _front(site, f"Content-Length: {len(body)}\r\n{te}\r\n", body)

    return build


def _te_cl(site: Site) -> bytes:
    inner = smuggled(site)
    body = f"{len(inner):x}\r\n{inner}\r\n0\r\n\r\n"
    return _front(site, "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", body)


def _te_only(te: str) -> typing.Callable[[Site], bytes]:
    def build(site: Site) -> bytes:
        return _front(site, f"{te}\r\n", f"3\r\nabc\r\n0\r\n\r\n{smuggled(site)}")

    return build


def _cl(*lines: str) -> typing.Callable[[Site], bytes]:
    def build(site: Site) -> bytes:
        return _front(site, "".join(line + "\r\n" for line in lines), "{}" + smuggled(site))

    return build


AMBIGUOUS: dict[str, typing.Callable[[Site], bytes]] = {
    "CL.TE": _cl_te("Transfer-Encoding: chunked"),
    "TE.CL": _te_cl,
    "CL + TE chunked, identity": _cl_te("Transfer-Encoding: chunked, identity"),
    "CL + TE space before colon": _cl_te("Transfer-Encoding : chunked"),
    "CL + TE tab": _cl_te("Transfer-Encoding:\tchunked"),
    "CL + TE xchunked": _cl_te("Transfer-Encoding: xchunked"),
    "CL + TE twice": _cl_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
    "CL + TE identity": _cl_te("Transfer-Encoding: identity"),
    "CL + TE upper case": _cl_te("Transfer-Encoding: CHUNKED"),
    "TE chunked, identity": _te_only("Transfer-Encoding: chunked, identity"),
    "TE space before colon": _te_only("Transfer-Encoding : chunked"),
    "TE vertical tab": _te_only("Transfer-Encoding:\x0bchunked"),
    "TE xchunked": _te_only("Transfer-Encoding: xchunked"),
    "TE identity": _te_only("Transfer-Encoding: identity"),
    "TE chunked twice": _te_only("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
    "TE chunked, chunked": _te_only("Transfer-Encoding: chunked, chunked"),
    "TE identity then chunked lines": _te_only(
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked"
    ),
    "TE trailing whitespace junk": _te_only("Transfer-Encoding: chunked \x0b"),
    "CL twice, equal": _cl("Content-Length: 2", "Content-Length: 2"),
    "CL twice, different": _cl("Content-Length: 2", "Content-Length: 0"),
    "CL 2, 2": _cl("Content-Length: 2, 2"),
    "CL +2": _cl("Content-Length: +2"),
    "CL -2": _cl("Content-Length: -2"),
    "CL 0x2": _cl("Content-Length: 0x2"),
    "CL 2 2": _cl("Content-Length: 2 2"),
    "CL space before colon": _cl("Content-Length : 2"),
    "CL huge": _cl("Content-Length: " + "9" * 40),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS))
async def test_ambiguous_framing_is_400_closed_and_nothing_is_smuggled(
    site: Site, case: str
) -> None:
    await refused_and_closed(site, AMBIGUOUS[case](site))


@pytest.mark.parametrize(
    "lines", [["Content-Length: 2"], ["Content-Length:  2  "], ["Content-Length:\t2"]]
)
async def test_a_request_in_a_body_is_only_a_body(site: Site, lines: list[str]) -> None:
    """Content-Length frames the body (OWS around its value is allowed); what follows
    it is the next request, answered in turn and charged like any."""
    inner = smuggled(site)
    fields = "".join(line + "\r\n" for line in lines)
    data = (
        f"POST {site.path}/front HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n{fields}\r\n{{}}"
    ).encode()
    body_inner = inner.encode()
    carrier = req(site, "/carrier", body=body_inner)
    async with conn(site) as c:
        c.send(data + carrier)
        first, second = await c.responses(2)
    assert echoed(first)["body"] == "{}"
    assert echoed(second)["body"] == inner  # the hidden request stayed a body
    assert await site.books() == (2, ["/front", "/carrier"])


# ------------------------------------------------------ chunked bodies: extensions, trailers


def chunked(site: Site, tail: str, chunks: str, extra: str = "") -> bytes:
    return (
        f"POST {site.path}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        f"Transfer-Encoding: chunked\r\n{extra}\r\n{chunks}"
    ).encode()


@pytest.mark.parametrize(
    "chunks",
    [
        "3\r\nabc\r\n0\r\n\r\n",
        "3;ext=1\r\nabc\r\n0;last\r\n\r\n",
        '3;name="quoted \\" value"\r\nabc\r\n0\r\n\r\n',
        '1;a\r\na\r\n1;b=c;d\r\nb\r\n1;e=""\r\nc\r\n0\r\n\r\n',
        "0003\r\nabc\r\n0\r\n\r\n",
        "3\r\nabc\r\n0\r\nX-Trailer: t\r\nX-Channel-User-Id: u9\r\n\r\n",
        # llhttp takes these, though RFC 9112's grammar has no empty extension name
        "3;=v\r\nabc\r\n0\r\n\r\n",
        "3;;a\r\nabc\r\n0\r\n\r\n",
        '3;a="\\x"\r\nabc\r\n0\r\n\r\n',
        # framing within its bound (gateway.chunk_framing): an extension of 4 KB, 20 zeros
        "3;n=" + "v" * 4000 + "\r\nabc\r\n0\r\n\r\n",
        "0" * 20 + "3\r\nabc\r\n0\r\n\r\n",
    ],
    ids=[
        "plain",
        "extensions",
        "quoted-extension",
        "many-extensions",
        "leading-zeros",
        "trailer",
        "empty-extension-name",
        "empty-extension",
        "quoted-pair",
        "4KB-extension",
        "20-leading-zeros",
    ],
)
async def test_chunk_extensions_and_trailers_are_ignored(site: Site, chunks: str) -> None:
    """The bot gets the decoded body with a length of its own; extensions and trailer
    fields never become request headers (a trailer cannot name another user)."""
    async with conn(site) as c:
        c.send(chunked(site, "/c", chunks))
        resp = await c.response()
    assert echoed(resp)["body"] == "abc"
    calls = site.calls()
    assert [c.body for c in calls] == [b"abc"]
    assert "X-Trailer" not in calls[0].headers
    assert calls[0].headers.getall("X-Channel-User-Id") == ["u1"]
    assert await site.books() == (1, ["/c"])


async def test_trailer_fields_never_reach_the_next_request(site: Site) -> None:
    """aiohttp's C parser hands a chunked body's last trailer field to the next request
    on the connection: that request is never served with it (the gateway closes after a
    chunked request), nor charged to the user the trailer names."""
    first = chunked(site, "/c", "3\r\nabc\r\n0\r\nX-Channel-User-Id: victim\r\n\r\n")
    second = (
        f"GET {site.path}/second HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u2\r\n"
        "X-Probe: 1\r\n\r\n"
    ).encode()
    async with conn(site) as c:
        c.send(first + second)
        resp = await c.response()
        rest = await c.rest()
    assert echoed(resp)["body"] == "abc"
    for call in site.calls():
        assert "victim" not in call.headers.getall("X-Channel-User-Id"), call.headers
    if b"HTTP/1." in rest:  # the second was served: with its own headers only
        assert [c.headers.getall("X-Channel-User-Id") for c in site.calls()] == [["u1"], ["u2"]]
    charged, paths = await site.books()
    assert charged == len(paths)
    assert paths[0] == "/c"


async def test_whitespace_before_a_chunk_extension_is_handled_or_refused(site: Site) -> None:
    """RFC 9112 allows BWS before ``;``; strict parsers refuse it. Either way the bot gets
    the decoded body or nothing, and a refusal closes the connection."""
    async with conn(site) as c:
        c.send(chunked(site, "/c", "3 ;e\r\nabc\r\n0\r\n\r\n"))
        resp = await c.response()
        if resp.status == 400:
            assert_problem(resp, 400)
            assert await c.closed()
            assert await site.books() == (0, [])
            return
    assert echoed(resp)["body"] == "abc"
    assert await site.books() == (1, ["/c"])


@pytest.mark.parametrize(
    "chunks",
    [
        "3\nabc\n0\n\n",  # bare LF after the size
        "3;x\nabc\r\n0\r\n\r\n",  # bare LF after an extension
        "3\r\nabcX\r\n0\r\n\r\n",  # data longer than its size
        "3\r\nab\r\n0\r\n\r\n",  # data shorter than its size
        "0x3\r\nabc\r\n0\r\n\r\n",
        "-3\r\nabc\r\n0\r\n\r\n",
        "3 \r\nabc\r\n0\r\n\r\n",  # whitespace after the size, no extension
        "+3\r\nabc\r\n0\r\n\r\n",
        "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n",  # size overflows 64 bits
        "3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n",  # framing field as trailer
        "3\r\nabc\r\n0\r\nX-T: 1\n\r\n",  # bare LF in the trailer section
        # chunk extensions RFC 9112 §7.1.1 does not allow (llhttp refuses each)
        "3;a b\r\nabc\r\n0\r\n\r\n",  # space inside a name
        "3; a\r\nabc\r\n0\r\n\r\n",  # space after the semicolon
        "3;a = b\r\nabc\r\n0\r\n\r\n",  # spaces around =
        "3;a,b\r\nabc\r\n0\r\n\r\n",  # a separator in a name
        "3;\r\nabc\r\n0\r\n\r\n",  # a semicolon and nothing
        "3;a;\r\nabc\r\n0\r\n\r\n",  # a trailing semicolon
        "3;a\x00\r\nabc\r\n0\r\n\r\n",  # NUL
        "3;a=\x7f\r\nabc\r\n0\r\n\r\n",  # DEL
        "3;a=\xff\r\nabc\r\n0\r\n\r\n",  # a byte over 0x7f (UTF-8 encoded)
        "3;a\rb\r\nabc\r\n0\r\n\r\n",  # bare CR
        '3;a="x\r\nabc\r\n0\r\n\r\n',  # an unterminated quoted string
        '3;a="x\x01"\r\nabc\r\n0\r\n\r\n',  # a control character quoted
        '3;a="x\ny"\r\nabc\r\n0\r\n\r\n',  # LF quoted
        '3;a="x"y\r\nabc\r\n0\r\n\r\n',  # junk after a quoted string
        "3\t;a\r\nabc\r\n0\r\n\r\n",  # tab before the semicolon
        "3\r\nabc\r\n0;x\n\r\n",  # bare LF after the last chunk's extension
    ],
    ids=[
        "bare-lf",
        "ext-bare-lf",
        "overlong-data",
        "short-data",
        "hex-prefix",
        "negative",
        "space-after-size",
        "plus-size",
        "overflow",
        "cl-trailer",
        "trailer-bare-lf",
        "ext-space-in-name",
        "ext-space-after-semicolon",
        "ext-spaces-around-equals",
        "ext-comma",
        "ext-empty",
        "ext-trailing-semicolon",
        "ext-nul",
        "ext-del",
        "ext-high-byte",
        "ext-bare-cr",
        "ext-unterminated-quote",
        "ext-quoted-control",
        "ext-quoted-lf",
        "ext-junk-after-quote",
        "ext-tab-before-semicolon",
        "last-ext-bare-lf",
    ],
)
async def test_malformed_chunks_are_refused_and_nothing_smuggled(site: Site, chunks: str) -> None:
    await refused_and_closed(site, chunked(site, "/c", chunks + smuggled(site)))


@pytest.mark.parametrize(
    "chunks",
    [
        "3;n=" + "v" * 300_000 + "\r\nabc\r\n0\r\n\r\n",
        "0" * 300_000 + "3\r\nabc\r\n0\r\n\r\n",
        "3\r\nabc\r\n0;n=" + "v" * 300_000 + "\r\n\r\n",
        "3\r\nabc\r\n0\r\n" + "".join(f"t{i}: {'v' * 8000}\r\n" for i in range(30)) + "\r\n",
    ],
    ids=["extension", "leading-zeros", "last-chunk-extension", "trailer-section"],
)
async def test_framing_over_its_bound_is_413_and_nothing_smuggled(site: Site, chunks: str) -> None:
    """A chunked body's framing (sizes, extensions, trailers) past 8 KiB plus 32 bytes a
    chunk (gateway.chunk_framing): 413, closed, nothing charged or forwarded."""
    async with conn(site) as c:
        c.send(chunked(site, "/c", chunks + smuggled(site)))
        resp = await c.response()
        assert_problem(resp, 413)
        assert orjson.loads(resp.body)["code"] == "chunk_framing_too_large"
        rest = await c.rest()
        assert b"HTTP/1." not in rest, rest[:300]
        assert await c.closed()
    assert await site.books() == (0, [])


# ------------------------------------------------------------------------ pipelining


async def test_pipelined_requests_are_answered_in_order_and_each_charged_once(
    site: Site,
) -> None:
    data = b"".join(
        [
            req(site, "/p0", body=b"{}"),
            req(site, "/p1", method="GET"),
            req(site, "/p2", method="PUT", body=b"x" * 70_000),  # a streamed body
            req(site, "/p3", body=b"[]", headers="Connection: close\r\n"),
        ]
    )
    async with conn(site) as c:
        c.send(data)
        answers = await c.responses(4)
        rest = await c.rest()
        assert await c.closed()
    assert [r.status for r in answers] == [200, 200, 201, 200]
    assert [orjson.loads(r.body)["path"].rsplit("/", 1)[1] for r in answers] == [
        f"p{i}" for i in range(4)
    ]
    assert b"HTTP/1." not in rest
    assert await site.books() == (4, ["/p0", "/p1", "/p2", "/p3"])


async def test_requests_after_connection_close_are_ignored(
    request: pytest.FixtureRequest, site: Site
) -> None:
    known_gap(request, site, {
        "aiohttp": "llhttp refuses data after Connection: close, and aiohttp's C parser then "
                   "drops the whole read: one 400 for all of it (nothing served or charged)",
    })  # fmt: skip
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + req(site, "/b", method="GET",
               headers="Connection: close\r\n") + req(site, "/never", method="GET"))  # fmt: skip
        a, b = await c.responses(2)
        rest = await c.rest()
        assert await c.closed()
    assert b"HTTP/1." not in rest
    await answered(site, (a, "/a"), (b, "/b"))


async def test_a_refused_request_in_a_pipeline_costs_nothing_and_keeps_the_order(
    site: Site,
) -> None:
    other = (
        f"GET /hooks/web/{site.ws}_nosuch1/x HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n\r\n"
    )
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + other.encode() + req(site, "/b", method="GET"))
        a, refused, b = await c.responses(3)
    assert_problem(refused, 404)
    await answered(site, (a, "/a"), (b, "/b"))


async def test_a_malformed_request_in_a_pipeline_ends_the_connection_after_the_good_ones(
    request: pytest.FixtureRequest,
    site: Site,
) -> None:
    known_gap(
        request,
        site,
        {
            "aiohttp": "aiohttp's C parser drops every request of a read ending in a malformed one"
            " (nothing served, nothing charged)"
        },
    )
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n"
               + req(site, "/never", method="GET"))  # fmt: skip
        good, bad = await c.responses(2)
        rest = await c.rest()
        assert await c.closed()
    assert echoed(good)["path"].endswith("/a")
    assert_problem(bad, 400)
    assert b"HTTP/1." not in rest
    assert await site.books() == (1, ["/a"])


# --------------------------------------------------------------------- 100-continue


async def test_expect_100_continue_gets_a_100_then_the_answer(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/e", headers="Expect: 100-continue\r\nContent-Length: 5\r\n",
                   length=False))  # fmt: skip
        interim = await c.response()
        assert interim.status == 100
        c.send(b"hello")
        final = await c.response()
    assert echoed(final)["body"] == "hello"
    assert await site.books() == (1, ["/e"])


async def test_a_refused_message_gets_its_refusal_not_a_100(site: Site) -> None:
    path = f"/hooks/web/{site.ws}_nosuch1/x"
    data = (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    async with conn(site) as c:
        c.send(data)
        first = await c.response()
        assert_problem(first, 404)
        # The body was never asked for: were the connection kept, the next request's
        # bytes would be read as that body. It is closed, and says so.
        assert first.headers.get("Connection", "").lower() == "close"
        assert await c.closed()
    assert await site.books() == (0, [])


async def test_an_unknown_expectation_is_417(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/e", body=b"{}", headers="Expect: teapot\r\n"))
        resp = await c.response()
    assert_problem(resp, 417)
    assert await site.books() == (0, [])


async def test_http10_ignores_expect_100_continue(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/e10", body=b"{}", headers="Expect: 100-continue\r\n",
                   version="HTTP/1.0"))  # fmt: skip
        resp = await c.response()
    assert echoed(resp)["body"] == "{}"
    assert await site.books() == (1, ["/e10"])


# ------------------------------------------------------------ HTTP/1.0 and keep-alive


async def test_http10_without_keep_alive_is_closed_after_the_answer(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET", version="HTTP/1.0"))
        resp = await c.response()
        assert resp.version == "HTTP/1.0" or resp.headers.get("Connection", "").lower() == "close"
        assert echoed(resp)["path"].endswith("/a")
        assert await c.closed()
    assert await site.books() == (1, ["/a"])


async def test_http10_with_keep_alive_keeps_the_connection(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET", version="HTTP/1.0",
                   headers="Connection: keep-alive\r\n"))  # fmt: skip
        first = await c.response()
        assert first.headers.get("Connection", "").lower() == "keep-alive"
        c.send(req(site, "/b", method="GET", version="HTTP/1.0"))
        second = await c.response()
        assert await c.closed()
    await answered(site, (first, "/a"), (second, "/b"))


async def test_http11_connection_close_is_honoured(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET", headers="Connection: close\r\n"))
        resp = await c.response()
        assert await c.closed()
    await answered(site, (resp, "/a"))


# ------------------------------------------------------------------ half-closed clients


async def test_a_half_closed_client_still_gets_its_answer(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/h", body=b'{"x":1}'))
        c.shut_wr()
        resp = await c.response()
        assert await c.closed()
    assert echoed(resp)["body"] == '{"x":1}'
    assert await site.books() == (1, ["/h"])


async def test_a_half_closed_client_gets_every_pipelined_answer(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + req(site, "/b", body=b"{}"))
        c.shut_wr()
        a, b = await c.responses(2)
        assert await c.closed()
    await answered(site, (a, "/a"), (b, "/b"))


async def test_a_client_closing_mid_body_is_never_forwarded(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/cut", body=b"0123456789")[:-5])
        c.shut_wr()
        rest = await c.rest()
    assert b" 200 " not in rest
    assert site.calls() == []
    # A charge taken before the body was cut stays unconfirmed: the sweeper refunds it.
    assert await site.all_unforwarded()


# ------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    "build",
    [
        lambda s: f"GET {s.path}/{SECRET}{'a' * 9000} HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
        lambda s: req(s, "/x", method="GET", headers=f"X-Big: {SECRET}{'b' * 9000}\r\n"),
        lambda s: req(s, "/x", method="GET", headers=f"X-{SECRET}{'c' * 9000}: v\r\n"),
        lambda s: req(
            s, "/x", method="GET", headers="".join(f"X-H{i}: {SECRET}\r\n" for i in range(200))
        ),
        lambda s: req(
            s,
            "/x",
            method="GET",
            headers="".join(f"X-H{i}: {SECRET}{'d' * 4000}\r\n" for i in range(40)),
        ),
    ],
    ids=["request-line", "header-value", "header-name", "header-count", "header-total"],
)
async def test_oversized_heads_are_4xx_problems_that_echo_nothing(
    site: Site, build: typing.Callable[[Site], bytes]
) -> None:
    async with conn(site) as c:
        c.send(build(site))
        resp = await c.response()
        assert await c.closed()
    assert_problem(resp)
    assert SECRET.encode() not in resp.raw_head + resp.body
    assert await site.books() == (0, [])


async def test_a_body_over_the_limit_is_413_uncharged(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/big", body=b"x" * (MAX_BODY + 1)))
        resp = await c.response()
    assert_problem(resp, 413)
    assert await site.books() == (0, [])


async def test_a_body_exactly_at_the_limit_is_served(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/edge", body=b"y" * MAX_BODY))
        resp = await c.response()
    assert len(echoed(resp)["body"]) == MAX_BODY
    assert await site.books() == (1, ["/edge"])


# -------------------------------------------------------------------- slow clients


async def test_slow_headers_are_cut_off(site: Site) -> None:
    async with conn(site) as c:
        c.send(f"POST {site.path}/slow HTTP/1.1\r\nX-Slow: ".encode())
        closed = False
        for _ in range(600):  # keep trickling; the server must close by itself (<= ~60 s)
            try:
                c.send(b"a")
                await c.writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                if await asyncio.wait_for(c.reader.read(65536), 0.1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionError:  # a reset: closed with trickled bytes unread
                closed = True
                break
        assert closed
    assert await site.books() == (0, [])


async def test_an_idle_keep_alive_connection_is_closed(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET"))
        echoed(await c.response())
        assert await c.closed(deadline=60)


async def test_a_stalled_body_is_cut_off_and_never_forwarded(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/stall", body=b"0123456789")[:-8])
        rest = await c.rest(deadline=60)
        assert await c.closed(deadline=1)
    assert b" 200 " not in rest
    assert site.calls() == []
    assert await site.all_unforwarded()  # the sweeper refunds them


async def test_a_stalled_chunked_body_is_cut_off(site: Site) -> None:
    """A streamed body goes to the bot as it comes: the bot got its start, so the charge
    stands (like a body over the limit); the bot never gets a complete request."""
    async with conn(site) as c:
        c.send(chunked(site, "/stall", "5\r\nab"))
        rest = await c.rest(deadline=60)
        assert await c.closed(deadline=1)
    assert b" 200 " not in rest
    assert site.calls() == []
    assert await site.charged() <= 1


# ----------------------------------------------------------------------------- syntax


SYNTAX_400: dict[str, typing.Callable[[Site], bytes]] = {
    "bare LF line ends": lambda s: (
        f"GET {s.path}/lf HTTP/1.1\nHost: gw\nX-Channel-User-Id: u1\n\n".encode()
    ),
    "bare LF in one header": lambda s: req(s, "/x", method="GET", headers="X-A: 1\nX-B: 2\r\n"),
    "NUL in a value": lambda s: req(s, "/x", method="GET", headers="X-A: a\x00b\r\n"),
    "CR in a value": lambda s: req(s, "/x", method="GET", headers="X-A: a\rb\r\n"),
    "DEL in a value": lambda s: req(s, "/x", method="GET", headers="X-A: a\x7fb\r\n"),
    "obs-fold": lambda s: req(s, "/x", method="GET", headers="X-A: a\r\n b\r\n"),
    "space before colon": lambda s: req(s, "/x", method="GET", headers="X-A : b\r\n"),
    "bad header name": lambda s: req(s, "/x", method="GET", headers="X(A): b\r\n"),
    "no colon": lambda s: req(s, "/x", method="GET", headers="Bad Header\r\n"),
    "Host missing": lambda s: f"GET {s.path}/x HTTP/1.1\r\nX-Channel-User-Id: u1\r\n\r\n".encode(),
    "Host twice": lambda s: req(s, "/x", method="GET", headers="Host: other\r\n"),
    "Host invalid": lambda s: (
        f"GET {s.path}/x HTTP/1.1\r\nHost: a b\r\nX-Channel-User-Id: u1\r\n\r\n".encode()
    ),
    "Host with path": lambda s: (
        f"GET {s.path}/x HTTP/1.1\r\nHost: a/b\r\nX-Channel-User-Id: u1\r\n\r\n".encode()
    ),
    "absolute-form, another host": lambda s: (
        f"GET http://evil.example{s.path}/x HTTP/1.1\r\nHost: gw\r\n"
        "X-Channel-User-Id: u1\r\n\r\n".encode()
    ),
    "lower-case method": lambda s: req(s, "/x", method="get"),
    "authority-form GET": lambda s: b"GET gw:80 HTTP/1.1\r\nHost: gw\r\n\r\n",
    "space in target": lambda s: f"GET {s.path}/a b HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
    "HTTP/2 preface": lambda s: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("case", list(SYNTAX_400))
async def test_malformed_syntax_is_400_and_closed(site: Site, case: str) -> None:
    await refused_and_closed(site, SYNTAX_400[case](site) + smuggled(site).encode())


async def test_other_http_versions_are_refused(site: Site) -> None:
    for version in ("HTTP/2.0", "HTTP/3.0", "HTTP/0.9"):
        async with conn(site) as c:
            c.send(req(site, "/v", method="GET", version=version))
            rest = await c.rest()
            assert await c.closed()
        # Refused (400, or 505 HTTP Version Not Supported) or closed unanswered.
        assert rest == b"" or rest.split(b" ", 2)[1] in (b"400", b"505"), (version, rest[:200])
    assert await site.books() == (0, [])


async def test_http09_is_not_served(site: Site) -> None:
    async with conn(site) as c:
        c.send(f"GET {site.path}/09\r\n".encode())
        rest = await c.rest()
        assert await c.closed()
    assert b" 200 " not in rest
    assert await site.books() == (0, [])


async def test_absolute_form_naming_the_host_is_served_as_origin_form(site: Site) -> None:
    async with conn(site) as c:
        c.send(f"GET http://gw{site.path}/abs?q=1 HTTP/1.1\r\nHost: gw\r\n"
               "X-Channel-User-Id: u1\r\n\r\n".encode())  # fmt: skip
        resp = await c.response()
    assert echoed(resp)["raw_path"].endswith("/abs?q=1")
    assert site.calls()[0].headers["X-Forwarded-Host"] == "gw"
    assert await site.books() == (1, ["/abs?q=1"])


async def test_http10_without_host_is_served(site: Site) -> None:
    async with conn(site) as c:
        c.send(f"GET {site.path}/h HTTP/1.0\r\nX-Channel-User-Id: u1\r\n\r\n".encode())
        resp = await c.response()
    await answered(site, (resp, "/h"))


@pytest.mark.parametrize("te", ["gzip, chunked", "identity, chunked"])
async def test_transfer_codings_other_than_chunked_are_refused(site: Site, te: str) -> None:
    """The gateway cannot decode them: passing the coded bytes on as the body would hand
    the bot something else than what was sent (RFC 9112 §6.1: 501)."""
    async with conn(site) as c:
        c.send(chunked(site, "/g", "3\r\nabc\r\n0\r\n\r\n").replace(
            b"Transfer-Encoding: chunked", f"Transfer-Encoding: {te}".encode()))  # fmt: skip
        resp = await c.response()
        assert await c.closed()
    assert_problem(resp, 501)
    assert await site.books() == (0, [])


@pytest.mark.parametrize("name", ["X-Channel-User-Id", "Idempotency-Key"])
async def test_a_metering_header_given_twice_is_refused(site: Site, name: str) -> None:
    """The gateway would charge one value and the bot might read the other."""
    async with conn(site) as c:
        c.send(req(site, "/d", method="GET", headers=f"{name}: a1\r\n{name}: a2\r\n"))
        resp = await c.response()
    assert_problem(resp, 400)
    assert await site.books() == (0, [])


async def test_the_gateway_survives_the_suite(site: Site) -> None:
    """After everything above, the same process still serves."""
    async with conn(site) as c:
        c.send(req(site, "/ok", method="GET"))
        assert echoed(await c.response())["path"].endswith("/ok")
    assert site.edge.served.proc.returncode is None
    assert await site.balanced()


# --------------------------------------------- fast path: hand-off to aiohttp mid-connection
# The fast path serves small, plain requests itself and hands anything else to aiohttp on
# the same connection, replaying the bytes. These cases cross that line in one connection;
# they hold for either server.

FAST_BODY = 64 * 1024


async def test_bodies_at_the_fast_path_limit_and_past_it(site: Site) -> None:
    async with conn(site) as c:
        at_limit = req(site, "/at", body=b"a" * FAST_BODY)
        c.send(at_limit + req(site, "/past", body=b"b" * (FAST_BODY + 1))
               + req(site, "/after", method="GET"))  # fmt: skip
        at, past, after = await c.responses(3)
    assert echoed(at)["body"] == "a" * FAST_BODY
    assert echoed(past)["body"] == "b" * (FAST_BODY + 1)
    assert echoed(after)["path"].endswith("/after")
    assert [len(call.body) for call in site.calls()] == [FAST_BODY, FAST_BODY + 1, 0]
    assert await site.books() == (3, ["/at", "/past", "/after"])


async def test_a_pipeline_crossing_to_aiohttp_is_answered_in_order(site: Site) -> None:
    inner = smuggled(site).encode()
    async with conn(site) as c:
        c.send(
            req(site, "/a", body=inner)  # fast: a request in its body stays a body
            + req(site, "/b", body=inner + b"x" * (FAST_BODY + 10))  # too big: handed off
            + req(site, "/c%41", method="GET")  # percent-encoded tail: aiohttp
            + req(site, "/d", body=b"{}")
        )
        answers = await c.responses(4)
    assert [orjson.loads(r.body)["raw_path"].rsplit("/", 1)[1] for r in answers] == [
        "a", "b", "c%41", "d"
    ]  # fmt: skip
    assert await site.books() == (4, ["/a", "/b", "/c%41", "/d"])
    assert [call.body[: len(inner)] for call in site.calls()[:2]] == [inner, inner]


async def test_a_request_handed_off_after_arriving_in_pieces(site: Site) -> None:
    second = req(site, "/big", body=b"z" * (FAST_BODY + 5))
    async with conn(site) as c:
        c.send(req(site, "/first", method="GET") + second[:20])
        first = await c.response()
        c.send(second[20:200])
        await c.writer.drain()
        c.send(second[200:])
        big = await c.response()
    assert echoed(first)["path"].endswith("/first")
    assert echoed(big)["body"] == "z" * (FAST_BODY + 5)
    assert await site.books() == (2, ["/first", "/big"])


async def test_a_half_closed_client_is_answered_across_the_hand_off(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + req(site, "/big", body=b"q" * (FAST_BODY + 1)))
        c.shut_wr()
        a, big = await c.responses(2)
        assert await c.closed()
    assert echoed(a)["path"].endswith("/a")
    assert len(echoed(big)["body"]) == FAST_BODY + 1
    assert await site.books() == (2, ["/a", "/big"])


def _ws_frame(text: str) -> bytes:
    """One masked text frame (a client's, RFC 6455 §5.2)."""
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_a_websocket_upgrade_after_a_fast_request(site: Site) -> None:
    """A fast request, then an Upgrade on the same connection: each WebSocket message is
    metered once and reaches the bot once."""
    ws_app = f"{site.ws}_wsock1"
    edge = site.edge
    await projection.put_app(
        edge.redis, ws_app, product="contact_center", upstream_url=edge.bot.url
    )
    upgrade = (
        f"GET /hooks/web/{ws_app}/ws HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    word = f"hello-{site.ws}"
    async with conn(site) as c:
        c.send(req(site, "/a", method="GET") + upgrade)
        first = await c.response()
        switched = await c.response(head_only=True)
        assert switched.status == 101, switched.raw_head
        c.send(_ws_frame(word))
        frame = await c._exactly(2, 30)
        echo = await c._exactly(frame[1] & 0x7F, 30)
    assert echoed(first)["path"].endswith("/a")
    assert echo == f"echo:{word}".encode()
    assert edge.bot.ws_messages.count(word) == 1
    assert await site.charged() == 2  # the GET and the one WebSocket message


async def test_headers_named_in_connection_never_reach_the_bot(site: Site) -> None:
    async with conn(site) as c:
        c.send(req(site, "/h", method="GET",
                   headers="Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nTE: trailers\r\n"
                   "Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\n"))  # fmt: skip
        echoed(await c.response())
    headers = site.calls()[0].headers
    for name in ("X-Hop", "TE", "Keep-Alive", "Proxy-Authorization"):
        assert name not in headers, name
    assert await site.books() == (1, ["/h"])


async def test_a_get_with_a_body_forwards_it_as_a_body(site: Site) -> None:
    inner = smuggled(site).encode()
    async with conn(site) as c:
        c.send(req(site, "/g", method="GET", body=inner) + req(site, "/next", method="GET"))
        first, second = await c.responses(2)
    assert echoed(first)["body"] == inner.decode()
    assert echoed(second)["path"].endswith("/next")
    assert await site.books() == (2, ["/g", "/next"])


# ------------------------------------------------------ the bot's side: its answers' framing

_EVIL = {
    # a second, unasked-for answer after the first: must never answer the next request
    "extra answer": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
    # ambiguous framing: refused (502, refunded), never relayed
    "CL and TE": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\nOK\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL",
}


@contextlib.asynccontextmanager
async def raw_bot(answer: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A bot that answers every request with ``answer`` verbatim on a kept connection."""
    seen: list[bytes] = []
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen.append(head.split(b"\r\n", 1)[0])
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(answer)
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await server.wait_closed()


@pytest.mark.parametrize("mode", list(_EVIL))
async def test_a_bots_extra_bytes_never_answer_another_request(site: Site, mode: str) -> None:
    evil_app = f"{site.ws}_evil1"
    async with raw_bot(_EVIL[mode]) as (url, seen):
        await projection.put_app(site.edge.redis, evil_app, product="contact_center",
                                 upstream_url=url)  # fmt: skip
        bodies = []
        for i in range(3):
            async with conn(site) as c:
                c.send(f"GET /hooks/web/{evil_app}/m{i} HTTP/1.1\r\nHost: gw\r\n"
                       "X-Channel-User-Id: u1\r\n\r\n".encode())  # fmt: skip
                resp = await c.response()
                bodies.append((resp.status, resp.body))
    assert len(seen) == 3  # every request reached the bot, none was answered by a leftover
    assert all(b"EVIL" not in body for _, body in bodies), bodies
    if mode == "extra answer":
        assert bodies == [(200, b"OK")] * 3
        assert await site.charged() == 3
    else:
        assert [status for status, _ in bodies] == [502] * 3
        assert await site.charged() == 0  # refunded


async def test_a_long_pipeline_past_the_read_buffers_is_answered_in_order(site: Site) -> None:
    """More pipelined bytes than either server buffers before pausing its reads."""
    n = 150
    pad = "X-Pad: " + "p" * 1000 + "\r\n"
    async with conn(site) as c:
        c.send(b"".join(req(site, f"/q{i}", body=b"{}", headers=pad) for i in range(n)))
        answers = await c.responses(n)
    assert [orjson.loads(r.body)["path"].rsplit("/", 1)[1] for r in answers] == [
        f"q{i}" for i in range(n)
    ]
    assert await site.books() == (n, [f"/q{i}" for i in range(n)])


async def test_http10_with_transfer_encoding_is_closed_after(site: Site) -> None:
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; the
    connection is closed after it (answered or refused), nothing after it is read."""
    data = (
        f"POST {site.path}/t HTTP/1.0\r\nHost: gw\r\nX-Channel-User-Id: u1\r\n"
        "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ).encode()
    async with conn(site) as c:
        c.send(data + smuggled(site).encode())
        resp = await c.response()
        rest = await c.rest()
        assert await c.closed()
    assert b"HTTP/1." not in rest
    if resp.status == 200:
        assert echoed(resp)["body"] == "abc"
        assert await site.books() == (1, ["/t"])
    else:
        assert_problem(resp, 400)
        assert await site.books() == (0, [])
