"""A tiny synchronous RESP client: one command over a fresh connection, for setup and
teardown code that must not depend on an event loop or on redis-py."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from tests.support.servers.process import HOST


class RedisReplyError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _read_reply(f: Any) -> Any:
    line: bytes = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data: bytes = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected RESP reply: {line!r}")


# How long one command may wait for its connection and its reply: a bound for a hang
# only. It was 2 s: a SAVE, MIGRATE or INFO on a loaded 2-core machine could pass that
# and fail its test's setup (FLUSHALL already had 120 s for it). Nothing waits on it to
# tell a server is down: a stopped or missing one refuses the connection at once.
COMMAND_BOUND_S = 60.0


def redis_command(
    port: int, *args: str | bytes | int, host: str = HOST, timeout: float = COMMAND_BOUND_S
) -> Any:
    """Send one command over a fresh connection and return the decoded reply.

    Synchronous and dependency-free (no event loop), for setup/teardown code.
    Raises ``OSError`` when nothing listens (or past ``timeout``) and
    ``RedisReplyError`` on ``-ERR``.
    """
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(_encode(args))
        with s.makefile("rb") as f:
            return _read_reply(f)


def info_fields(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
