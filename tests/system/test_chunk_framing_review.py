"""Second-pass review of the chunk framing bound (gateway.chunk_framing): ways a chunked
body's framing was parsed uncounted."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest

from tests.support.bot import Running
from tests.support.rawhttp import RawConn
from tests.system.test_chunk_flood import HANG_S, gw, sent
from tests.system.test_chunk_framing_bound import AUTH, MB

pytestmark = pytest.mark.usefixtures("traffic_server")
__all__ = ["gw"]


async def test_a_body_begun_after_a_declined_upgrade_is_never_parsed(gw: Running) -> None:
    """A request asking for a WebSocket, answered without one (any answer but 101), and
    on the admin port kept alive: aiohttp kept what followed it unparsed and, once the
    answer was on its way, fed it to its parser itself, past the protocol's count. A
    chunked request begun there was never watched: its body's framing and chunks went
    uncounted to its end (a 2 MB extension created the user, 201). Now the admin port
    closes after a declined upgrade, as the traffic port does (``close_announced``):
    nothing after it is parsed (and what aiohttp kept of it is counted,
    :mod:`gateway.upgrade_tail`)."""
    host = gw.admin_url.split("//", 1)[1]
    body = orjson.dumps({"email": "upg@example.com", "name": "x"})
    ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n"
    upgrade = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n{ws}\r\n"
    post = f"POST /v1/users HTTP/1.1\r\nHost: {host}\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n"
    async with RawConn.open(gw.admin_url) as conn:
        await sent(conn, (upgrade + post).encode())  # one write: the POST's head with it
        first = await conn.response(HANG_S)
        assert first.status == 200
        assert first.headers.get("Connection", "").lower() == "close"
        with contextlib.suppress(ConnectionError):
            await sent(conn, b"%x;n=%b\r\n%b\r\n0\r\n\r\n" % (len(body), b"v" * MB, body))
        rest = await conn.rest(HANG_S)  # until the gateway closes
    assert b"HTTP/1." not in rest  # the POST never answered, hence never served


async def test_a_body_refused_while_its_handler_waits_is_not_taken_whole(gw: Running) -> None:
    """The admin API reads a body whole (aiohttp's ``request.read()``). Its first chunk,
    a complete JSON object, was read; the last chunk's extension then ran past the bound
    while the read waited for more: the refusal ended the stream, the waiting read got
    its end, and the API took the first chunk as the whole body, created the user and
    answered 201. Now the waiting read fails with the refusal: 413, nothing created."""
    host = gw.admin_url.split("//", 1)[1]
    body = orjson.dumps({"email": "waiting@example.com", "name": "x"})
    head = f"POST /v1/users HTTP/1.1\r\nHost: {host}\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n"
    bomb = b"0;n=" + b"v" * 200_000
    async with RawConn.open(gw.admin_url) as conn:
        await sent(conn, head.encode() + b"%x\r\n%b\r\n" % (len(body), body))
        answer = asyncio.ensure_future(conn.response(HANG_S))
        try:
            with contextlib.suppress(ConnectionError):
                # The extension in small writes until the gateway answers (it refuses
                # past 8 KiB; the handler waits in its read meanwhile).
                for i in range(0, len(bomb), 600):
                    if answer.done():
                        break
                    await sent(conn, bomb[i : i + 600])
                    await asyncio.wait([answer], timeout=0.01)
            resp = await answer
        finally:
            answer.cancel()
    assert (resp.status, orjson.loads(resp.body).get("code")) == (413, "chunk_framing_too_large")


async def test_a_body_behind_a_full_queue_of_requests_is_bounded(gw: Running) -> None:
    """aiohttp queues at most 32 pipelined requests; past that its parser stops after
    each request it completes and keeps the rest of what it is fed, then parses it all
    in one call as the queue drains. A chunked request begun there was watched only from
    the next bytes received: one begun and ended in that call (its framing all kept
    behind a full queue) was counted nowhere: 100 KB of extension behind 200 pipelined
    GETs created the user, 201 (up to a socket read's worth, 256 KiB)."""
    host = gw.admin_url.split("//", 1)[1]
    body = orjson.dumps({"email": "queued@example.com", "name": "x"})
    get = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    post = f"POST /v1/users HTTP/1.1\r\nHost: {host}\r\n{AUTH}Transfer-Encoding: chunked\r\n\r\n"
    wire = b"%x;n=%b\r\n%b\r\n0\r\n\r\n" % (len(body), b"v" * 100_000, body)
    async with RawConn.open(gw.admin_url) as conn:
        await sent(conn, get * 200 + post.encode() + wire)  # one write
        for _ in range(200):
            assert (await conn.response(HANG_S)).status == 200
        resp = await conn.response(HANG_S)
    assert (resp.status, orjson.loads(resp.body).get("code")) == (413, "chunk_framing_too_large")
