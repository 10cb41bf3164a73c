"""The raw bot sockets of the WebSocket charge tests: the bot's side of the handshake,
what it read, and when its charges are settled; shared by the tests that count charged
messages against those a bot read (test_ws_taken, test_ws_shutdown, test_ws_stalled_bot)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import ClientWebSocketResponse, WSMessage, WSMsgType

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.settings import HOST

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's, in Sec-WebSocket-Accept


def switching_protocols(head: bytes) -> bytes:
    """A bot's 101 to the upgrade request ``head``, its Sec-WebSocket-Key accepted."""
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.decode().split("\r\n")
        if line.lower().startswith("sec-websocket-key")
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


async def accept_upgrade(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Read the gateway's upgrade request on a bot connection and write the 101 (not
    drained)."""
    w.write(switching_protocols(await r.readuntil(b"\r\n\r\n")))


def client_frames(data: bytes) -> list[int]:
    """The sizes of the whole text or binary frames in ``data`` (masked, from a client)."""
    sizes, at = [], 0
    while at + 2 <= len(data):
        b0, n = data[at], data[at + 1] & 0x7F
        at += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        if at + 4 + n > len(data):
            break
        at += 4 + n
        if b0 & 0x0F in (1, 2):
            sizes.append(n)
    return sizes


def client_close(data: bytes) -> int | None:
    """The status code of the first whole close frame in ``data`` (masked, from a client),
    0 for one without a code; None when there is none."""
    at = 0
    while at + 2 <= len(data):
        b0, n = data[at], data[at + 1] & 0x7F
        at += 2
        if n == 126:
            (n,) = struct.unpack("!H", data[at : at + 2])
            at += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", data[at : at + 8])
            at += 8
        if at + 4 + n > len(data):
            return None
        if b0 & 0x0F == 8:
            mask, body = data[at : at + 4], data[at + 4 : at + 4 + min(n, 2)]
            code = bytes(b ^ mask[i] for i, b in enumerate(body))
            return struct.unpack("!H", code)[0] if len(code) == 2 else 0
        at += 4 + n
    return None


async def settled(rclient: RedisClient, ws: str, within_s: float = 60.0) -> bool:
    """Whether every charge of workspace ``ws`` was confirmed or refunded (nothing left
    for the sweeper), polled for up to ``within_s`` (a bound for a hang: a refund window
    must pass first for a charge left to the sweeper, so a test with a window past some
    seconds gives the window and more)."""
    for _ in range(int(within_s / 0.05)):
        if await rclient.zcard(keys.reservations_key(ws)) == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def tight_bot(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    """A bot's listener and URL whose connections take 4 KiB at a time (the receive
    buffer accepted sockets inherit, and the stream's limit): a client frame bigger than
    the kernel's buffers then waits on the bot's reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((HOST, 0))
    sock.listen(8)
    url = f"http://{HOST}:{sock.getsockname()[1]}"
    return await asyncio.start_server(handle, sock=sock, limit=4096), url


async def after_pings(sock: ClientWebSocketResponse) -> WSMessage:
    """Ping until something else than a pong comes (the gateway answers pings itself, and
    they keep no socket alive: an idle one is closed meanwhile), and return that."""
    while True:
        await sock.ping()
        msg = await sock.receive()
        if msg.type is not WSMsgType.PONG:
            return msg


def frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame (at most 64 KiB of payload), masked as a client's must be."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    head += bytes([bit | n]) if n < 126 else bytes([bit | 126]) + struct.pack("!H", n)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_header(r: asyncio.StreamReader) -> tuple[int, bool, int]:
    """The next frame's opcode, whether it is masked and its payload's length (its mask
    key, if any, and payload left to read)."""
    b0, b1 = await r.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await r.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await r.readexactly(8))
    return b0 & 0x0F, bool(b1 & 0x80), n


async def read_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next frame's opcode and (unmasked) payload."""
    opcode, masked, n = await read_header(r)
    key = await r.readexactly(4) if masked else b""
    payload = await r.readexactly(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return opcode, payload


async def raw_upgrade(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client's WebSocket to ``url`` (``http://host:port/path?query``) over a plain
    socket, its 101 read: frames are then the test's to write and read."""
    rest = url.removeprefix("http://")
    hostport, _, target = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    r, w = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(b"k" * 16).decode()
    w.write(
        f"GET /{target} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return r, w
