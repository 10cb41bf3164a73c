"""A bot's answer head reaches the client the same on both traffic servers, whatever text
it carries (gateway.header_text): a field whose value has a control character is dropped
(aiohttp's writer refuses it: a 500 with the message charged), a reason phrase with one,
or not UTF-8, is the standard one; never a 500, never charged for an answer the client
did not get.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from gateway import answer_back
from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, free_credit
from tests.support.rawbot import Answer, running_raw_bot
from tests.support.rawhttp import RawConn
from tests.system.test_forwarding_attack import (
    APP,
    FREE,
    HELLO,
    OK,
    WS,
    Edge,
    clean_fields,
    message,
    problem,
)

pytestmark = pytest.mark.usefixtures("traffic_server")
USERS = itertools.count(100)


@pytest.fixture
async def edge(seeded_gateway: SeededGateway, rclient: RedisClient) -> AsyncIterator[Edge]:
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            yield Edge(gw, bot, rclient)


CONTROL_FIELDS = {
    "SOH": b"X-A: a\x01b\r\n",
    "DEL": b"X-A: a\x7fb\r\n",
    "ESC": b"X-A: a\x1bb\r\n",
    "console cookie": b"Set-Cookie: cg_sess\x01ion=S; Path=/\r\n",
    "vertical tab": b"X-A: a\x0bb\r\n",
}


async def charge_of(edge: Edge, path: str, version: str = "1.1") -> tuple[bytes, bytes, int]:
    """The raw head and body a message gets, and what it was charged (a new user's: its
    conversation's first message); the client's connection then still in step."""
    before = await edge_credit(edge)
    data = message(path, close=False).replace(b" HTTP/1.1\r\n", f" HTTP/{version}\r\n".encode())
    data = data.replace(b": u1\r\n", b": u%d\r\n" % next(USERS))
    async with RawConn.open(edge.gw.url) as c:
        c.send(data)
        resp = await c.response()
        charged = before - await edge_credit(edge)
        if version == "1.1":
            c.send(message("/next"))
            assert (await c.response()).status == 200
    return resp.raw_head, resp.body, charged


async def edge_credit(edge: Edge) -> int:
    return await free_credit(edge.rclient, WS)


@pytest.mark.parametrize("case", CONTROL_FIELDS, ids=list(CONTROL_FIELDS))
async def test_a_field_with_a_control_character_is_dropped(edge: Edge, case: str) -> None:
    edge.bot.answers["/b/x"] = Answer(
        OK + b"X-Before: 1\r\n" + CONTROL_FIELDS[case] + b"X-Tab: a\tb\r\n" + HELLO, keep=True
    )
    edge.bot.answers["/b/plain"] = Answer(OK + HELLO, keep=True)
    _, _, price = await charge_of(edge, "/plain")
    head, body, charged = await charge_of(edge, "/x")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert body == b"hello"
    assert b"\r\nX-Before: 1\r\n" in head
    assert b"\r\nX-Tab: a\tb\r\n" in head  # HTAB is text
    assert b"X-A" not in head
    assert b"Set-Cookie" not in head
    clean_fields(head)
    assert charged == price > 0  # charged as any answer the client got


REASONS = {  # the bot's status line: the client's
    b"200 O\x01K": b"200 OK",
    b"200 O\x00K": b"200 OK",
    b"200 O\x1bK": b"200 OK",
    b"200 O\x7fK": b"200 OK",
    b"200 O\tK": b"200 OK",
    b"200 caf\xe9": b"200 OK",  # not UTF-8
    b"404 gone\x01": b"404 Not Found",
    b"299 odd\x01": b"299 ",  # no standard phrase: none, as aiohttp
    b"200 caf\xc3\xa9": b"200 caf\xc3\xa9",  # UTF-8 text passes
    b"200 Fine": b"200 Fine",
    b"200": b"200 ",
}


@pytest.mark.parametrize("version", ["1.1", "1.0"])  # 1.0: the fast path hands it to aiohttp
async def test_a_reason_with_a_control_character_is_the_standard_one(
    edge: Edge, version: str
) -> None:
    for i, (sent, got) in enumerate(REASONS.items()):
        edge.bot.answers[f"/b/r{i}"] = Answer(b"HTTP/1.1 " + sent + b"\r\n" + HELLO, keep=True)
        head, body, charged = await charge_of(edge, f"/r{i}", version)
        assert head.split(b"\r\n", 1)[0].partition(b" ")[2] == got, (sent, head)
        assert body == b"hello"
        clean_fields(head)
        assert charged > 0


async def test_a_head_the_writer_refuses_is_a_refunded_502(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever aiohttp's writer refuses of an answer (its ValueError from prepare) is the
    bot's invalid answer: 502 and refunded, never a 500 that stays charged. HTTP/1.0: the
    fast path hands it to aiohttp too."""
    real = answer_back.downstream_headers

    def with_control(src: CIMultiDict[str]) -> CIMultiDict[str]:
        out = real(src)
        out["X-Bad"] = "a\x01b"  # what no check let through
        return out

    monkeypatch.setattr(answer_back, "downstream_headers", with_control)
    edge.bot.answers["/b/x"] = Answer(OK + HELLO, keep=True)
    before = await edge_credit(edge)
    data = message("/x").replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n")
    (resp,) = await edge.send(data)
    assert problem(resp, 502) == "upstream_unavailable"
    assert await edge_credit(edge) == before  # refunded: the client got no answer


# What aiohttp's client parser reads of an odd answer, the fast path now reads alike:
# (the bot's answer, the fields the client gets but Date, Server, Content-* and framing).
ODD_ANSWERS = {
    "trailing blanks": (OK + b"X-A: a \t \r\n" + HELLO, [b"X-A: a"]),
    "a folded line": (OK + b"X-A: a\r\n b\r\n\tc\r\n" + HELLO, [b"X-A: a b\tc"]),
    "a cookie folded into a field": (
        OK + b"X-A: a\r\n Set-Cookie: cg_session=S\r\n" + HELLO,
        [b"X-A: a Set-Cookie: cg_session=S"],
    ),
    "bare LFs": (b"HTTP/1.1 200 OK\nX-A: a\nContent-Length: 5\n\nhello", [b"X-A: a"]),
    "spaces after a chunk size": (
        OK + b"X-A: a\r\nTransfer-Encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n",
        [b"X-A: a"],
    ),
}


@pytest.mark.parametrize("case", ODD_ANSWERS, ids=list(ODD_ANSWERS))
async def test_an_odd_answer_is_read_alike_on_both_servers(edge: Edge, case: str) -> None:
    answer, fields = ODD_ANSWERS[case]
    edge.bot.answers["/b/x"] = Answer(answer, keep=True)
    head, body, charged = await charge_of(edge, "/x")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert body == b"hello"
    # aiohttp adds a Content-Type to an answer without one, the fast path does not
    ours = (b"date:", b"server:", b"content-", b"transfer-encoding:", b"connection:")
    lines = head[:-4].split(b"\r\n")[1:]
    assert [ln for ln in lines if not ln.lower().startswith(ours)] == fields, head
    clean_fields(head)
    assert charged > 0
