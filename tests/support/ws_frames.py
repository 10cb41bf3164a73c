"""What a raw bot socket read of a WebSocket, and when its charges are settled: shared
by the tests that count charged messages against those a bot read (test_ws_taken,
test_ws_shutdown)."""

from __future__ import annotations

import asyncio
import struct

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient


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


async def settled(rclient: RedisClient, ws: str) -> bool:
    """Whether every charge of workspace ``ws`` was confirmed or refunded (nothing left
    for the sweeper), polled for up to 30 s."""
    for _ in range(600):
        if await rclient.zcard(keys.reservations_key(ws)) == 0:
            return True
        await asyncio.sleep(0.05)
    return False
