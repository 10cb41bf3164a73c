"""Messages whose admissions wait on Redis together, on both traffic servers: each client
gets its own decision once Redis answers, and one that left meanwhile is never served
for nothing (meter.admission.ticket: on the fast path a reply resumes each waiting
message itself, no loop callback between).

Redis is frozen (SIGSTOP) while three clients send, until the gateway has all three in
flight (its ``/metrics``); one client resets its connection; then Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit
from tests.support.rawbot import RawBot, running_raw_bot
from tests.support.rawhttp import RawConn
from tests.support.servers import RedisServer

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "tkwait"
APP = f"{WS}_app1"
FREE = 10_000_000  # $10
PRICE = 10_000  # a contact_center message: $0.01
HANG_S = 60.0  # a bound on a hang only


def message(tail: str, user: str, extra: bytes = b"") -> bytes:
    head = f"POST /hooks/web/{APP}{tail} HTTP/1.1\r\nHost: gw\r\nX-Channel-User-Id: {user}\r\n"
    return head.encode() + b"Content-Length: 2\r\n" + extra + b"\r\n{}"


@contextlib.asynccontextmanager
async def edge(seeded_gateway: SeededGateway) -> AsyncIterator[tuple[Running, RawBot]]:
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "contact_center", "upstream_url": bot.url + "/b"}}
        # One delivery of a key: its second is refused (409) by admit.lua itself.
        async with seeded_gateway(WS, apps, free=FREE, idempotency_max_deliveries=1) as gw:
            yield gw, bot


async def in_flight(admin_url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("creditgate_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


async def test_each_waiter_gets_its_own_decision_and_a_client_gone_is_never_free(
    seeded_gateway: SeededGateway, rclient: RedisClient, redis_server: RedisServer
) -> None:
    async with edge(seeded_gateway) as (gw, bot), contextlib.AsyncExitStack() as stack:
        async with RawConn.open(gw.url) as c:  # the key's one delivery
            c.send(message("/first", "u2", b"Idempotency-Key: k1\r\n"))
            assert (await c.response()).status == 200
        a, b, c = [await stack.enter_async_context(RawConn.open(gw.url)) for _ in range(3)]
        with redis_server.frozen():
            # Written at once: the gateway reads them in one pass, one admit.lua call.
            a.send(message("/a", "u1"))
            b.send(message("/b", "u2", b"Idempotency-Key: k1\r\n"))
            c.send(message("/c", "u3"))
            async with asyncio.timeout(HANG_S):
                while await in_flight(gw.admin_url) < 3:  # noqa: ASYNC110 (a scrape)
                    await asyncio.sleep(0.05)
            sock = c.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.writer.close()  # a reset: the client is gone
        ra, rb = await a.response(), await b.response()
    assert ra.status == 200, (ra.status, ra.body[:300])
    assert ra.body.startswith(b"POST /b/a HTTP/1.1\r\n"), ra.body[:100]
    assert b"\r\nX-Channel-User-Id: u1\r\n" in ra.body
    assert rb.status == 409, (rb.status, rb.body[:300])
    assert orjson.loads(rb.body)["code"] == "duplicate_delivery"
    paths = [head.split(b" ")[1] for head in bot.heads]
    assert paths[:2] == [b"/b/first", b"/b/a"], paths
    # The client gone: served (its answer written to nobody) and charged, or never sent
    # and its charge not standing (given back, or reserved for the sweeper to give back).
    gone_sent = paths[2:] == [b"/b/c"]
    assert gone_sent or paths[2:] == [], paths
    async with asyncio.timeout(HANG_S):
        while True:  # a refund may still be on its way
            charged = (FREE - await free_credit(rclient, WS)) // PRICE
            reserved = int(await rclient.zcard(keys.reservations_key(WS)))
            if charged - reserved == len(paths):
                break
            await asyncio.sleep(0.05)
    assert charged - reserved == 2 + gone_sent
