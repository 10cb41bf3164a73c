"""No answer names the gateway's software versions, on both ports and both traffic
servers: aiohttp's default ``Server`` is ``Python/3.x aiohttp/3.x``. Every answer the
gateway makes itself says ``Server: creditgate``; so does a bot's answer without a
``Server`` of its own (a bot's own passes: tests/system/test_forwarding_attack.py).

Raw sockets on both sides: the bot (tests/support/rawbot.py) answers without ``Server``,
and the client reads each head as it came.
"""

from __future__ import annotations

import pytest
from aiohttp.http import SERVER_SOFTWARE

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import SeededGateway, running_ws_bot
from tests.support.rawbot import Answer, running_raw_bot
from tests.support.rawhttp import RawConn, Response

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "srvhdr"
APP = f"{WS}_app1"
WS_APP = f"{WS}_app2"
BROKE = "srvhdr0"  # a workspace without credit: its messages are refused
BROKE_APP = f"{BROKE}_app1"
FREE = 10_000_000

MALFORMED = b"GET / HTTP/1.1\r\nHost: gw.example\r\nNo colon here\r\n\r\n"
UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def message(app: str) -> bytes:
    return (
        f"POST /hooks/web/{app} HTTP/1.1\r\nHost: gw.example\r\nX-Channel-User-Id: u1\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    ).encode()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw.example\r\n{extra}Connection: close\r\n\r\n".encode()


async def answer(url: str, data: bytes) -> Response:
    async with RawConn.open(url) as c:
        c.send(data)
        return await c.response()


def versions(resp: Response) -> list[str]:
    """The header lines that name aiohttp or Python."""
    return [
        f"{name}: {value}"
        for name, value in resp.headers.items()
        if "aiohttp" in value.lower() or "python/" in value.lower()
    ]


async def test_no_answer_names_a_version(
    seeded_gateway: SeededGateway, rclient: RedisClient
) -> None:
    async with running_raw_bot() as bot, running_ws_bot() as ws_bot:
        apps = {
            APP: {"product": "automation", "upstream_url": bot.url + "/b"},
            WS_APP: {"product": "automation", "upstream_url": ws_bot.url},
        }
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            broke = {BROKE_APP: {"product": "automation", "upstream_url": bot.url}}
            await seed(rclient, gw.gateway.settings, BROKE, broke, free=0)
            traffic = {
                "proxied": (message(APP), 200),
                "refused": (message(BROKE_APP), 402),
                "unknown route": (get("/nope"), 404),
                "malformed": (MALFORMED, 400),
                "websocket": (
                    get(f"/hooks/web/{WS_APP}", UPGRADE + "X-Channel-User-Id: u1\r\n"),
                    101,
                ),
            }
            admin = {
                "healthz": (get("/healthz"), 200),
                "readyz": (get("/readyz"), 200),
                "metrics": (get("/metrics"), 200),
                "admin API": (get(f"/v1/workspaces/{WS}"), 401),
                "admin unknown route": (get("/nope"), 404),
                "admin malformed": (MALFORMED, 400),
            }
            leaked: dict[str, list[str]] = {}
            servers: dict[str, list[str]] = {}
            for url, cases in ((gw.url, traffic), (gw.admin_url, admin)):
                for case, (data, status) in cases.items():
                    resp = await answer(url, data)
                    assert resp.status == status, (case, resp.raw_head, resp.body[:300])
                    leaked[case] = versions(resp)
                    servers[case] = resp.headers.getall("Server", [])
            assert leaked == {case: [] for case in leaked}
            assert servers == {case: ["creditgate"] for case in servers}
            assert len(bot.heads) == 1  # the proxied message reached the bot; the refused did not
            assert ws_bot.upgrades


async def test_a_bots_own_server_passes_even_when_it_reads_as_the_gateways(
    seeded_gateway: SeededGateway,
) -> None:
    """A bot on the gateway's Python and aiohttp says what aiohttp would have said: its
    header, passed as it came (the gateway replaces only its own)."""
    async with running_raw_bot() as bot:
        apps = {APP: {"product": "automation", "upstream_url": bot.url + "/b"}}
        async with seeded_gateway(WS, apps, free=FREE) as gw:
            bot.answers["/b"] = Answer(
                b"HTTP/1.1 200 OK\r\nServer: %b\r\nContent-Length: 2\r\n\r\nok"
                % SERVER_SOFTWARE.encode()
            )
            resp = await answer(gw.url, message(APP))
    assert resp.status == 200, resp.raw_head
    assert resp.headers.getall("Server") == [SERVER_SOFTWARE], resp.raw_head
