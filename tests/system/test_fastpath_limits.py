"""What one client connection may make the traffic server hold: a request head read as
it arrives and refused past the limits (on both servers alike), pipelined requests
buffered up to a bound however many are answered, and a refusal among pipelined
requests answered on the fast path like any other (real sockets, Redis and bot)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yarl import URL

from gateway.appkeys import TRAFFIC_STATS
from gateway.traffic_stats import TrafficStats
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, eventually, raw_exchange, running_gateway
from tests.support.settings import make_settings

WS = "fastlim"
APP = f"{WS}_app1"
FUNDS = 10**9
READ = 256 * 1024  # the most one read of a socket takes (asyncio's and uvloop's buffer)


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, traffic_server: str
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path, traffic_server=traffic_server)
    app = {"product": "automation", "upstream_url": bot.url, "funds": FUNDS}
    await seed(rclient, settings, WS, {APP: app})
    async with running_gateway(settings) as running:
        yield running


def stats(gw: Running) -> TrafficStats:
    return gw.gateway.traffic[TRAFFIC_STATS]


def unread(local: int, remote: int) -> int:
    """Bytes the kernel holds for the socket ``local``->``remote`` (loopback ports) that
    its process has not read yet (``rx_queue`` of /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (
                local,
                remote,
            ):
                return int(fields[4].split(":")[1], 16)
    raise LookupError((local, remote))


def unsent(sock: socket.socket) -> int:
    """Bytes in ``sock``'s send queue not yet taken by its peer's kernel (SIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0])


@pytest.mark.parametrize("traffic_server", ["aiohttp", "fast"], indirect=True)
async def test_an_endless_header_is_refused_before_it_is_read_whole(gw: Running) -> None:
    """``X-Big: `` and 1 MiB without a line end: refused (aiohttp's limits, on both
    servers) and closed, without the client ever getting the whole MiB in."""
    total = 1 << 20
    u = URL(gw.url)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    sock.setblocking(False)
    await loop.sock_connect(sock, (u.host, u.port))
    head = f"POST /hooks/web/{APP}/e HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u\r\nX-Big: "
    await loop.sock_sendall(sock, head.encode())
    chunk, sent, answer = b"a" * 16384, 0, b""
    try:
        while sent < total and not answer:  # until refused, or all of it is in
            try:
                sent += sock.send(chunk[: total - sent])
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the gateway reads meanwhile (or stopped)
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
        while data := await loop.sock_recv(sock, 65536):
            answer += data
    except (ConnectionResetError, BrokenPipeError):
        pass  # refused and closed with the rest unread: a reset, after the answer
    finally:
        sock.close()
    print(f"{sent} of {total} bytes sent")
    assert sent < total
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", answer[:300]
    assert b'"code":"malformed_request"' in answer  # aiohttp's parser refused it
    assert b"aaaa" not in answer  # nothing echoed


@pytest.mark.parametrize("traffic_server", ["fast"], indirect=True)
async def test_pipelined_requests_are_buffered_up_to_a_bound(gw: Running, bot: Bot) -> None:
    """A client pipelines answered requests and never reads: however many are answered,
    the gateway holds at most its backlog bound and one read of what it was sent."""
    body = b"b" * 3000
    one = f"POST /hooks/web/{APP}/status/200 HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u\r\n"
    one_b = one.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    blob = memoryview(one_b * 4000)
    u = URL(gw.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await asyncio.get_running_loop().sock_connect(sock, (u.host, u.port))
    sock.setblocking(True)
    sent = [0]

    def flood() -> None:
        try:
            while sent[0] < len(blob):
                sent[0] += sock.send(blob[sent[0] : sent[0] + 65536])
        except OSError:
            pass  # shut down by the test

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        assert await eventually(lambda: bot.count() >= 30, 60)
        # The gateway runs on this thread: nothing is read while this is measured.
        out, local = sent[0], sock.getsockname()[1]
        read = out - unsent(sock) - unread(u.port or 0, local)
        held = read - bot.count() * len(one_b)
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(sender.join)
        sock.close()
    print(f"held {held} after {bot.count()} answered")
    assert held <= 64 * 1024 + READ + 2 * len(one_b), (held, bot.count())


@pytest.mark.parametrize("traffic_server", ["fast"], indirect=True)
async def test_a_refusal_among_pipelined_requests_is_no_hand_off(gw: Running, bot: Bot) -> None:
    """A refusal is answered while its exception is handled: the requests pipelined after
    it are still the fast path's (none handed to aiohttp)."""
    host = URL(gw.url).authority

    def post(app: str, path: str, last: bool = False) -> str:
        close = "Connection: close\r\n" if last else ""
        return (
            f"POST /hooks/web/{app}/{path} HTTP/1.1\r\nHost: {host}\r\n{close}"
            "X-Channel-User-Id: u1\r\nContent-Length: 1\r\n\r\nx"
        )

    pipelined = post(f"{WS}_nope1", "a") + post(APP, "b") + post(APP, "c", last=True)
    answer = await raw_exchange(gw.url, pipelined.encode())
    first, *rest = answer.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"404 ")
    assert b'"unknown_app"' in first
    assert [r[:7] for r in rest] == [b"200 OK\r", b"200 OK\r"]
    assert [c.path_qs for c in bot.calls] == ["/b", "/c"]
    assert (stats(gw).fast, stats(gw).handed_off) == (3, 0)
