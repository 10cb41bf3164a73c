"""What a chunked request carrying bytes that are no body costs a gateway worker: chunk
extensions (``5;name=value``), leading zeros in a chunk's size, trailer fields after
the last chunk, each as one large request and trickled a byte at a time.

Runs ``creditgate serve`` (one traffic worker, the admin port in the parent) in front of
a counting bot and a throwaway ``redis-server``, sends each case to the traffic port (a
streamed body, and a keyed one read whole before admission) and to the admin API, and
prints per case: the answer, the bytes the server took before answering or closing,
the CPU time (user + system, from /proc) of the process that serves the port, whether
the message was charged and whether the bot got it.

    .venv/bin/python -m bench.chunk_ext [--mb 10] [--server fast|aiohttp] [--trickle-s 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

from yarl import URL

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient, connect
from tests.support.bot import Bot, free_credit, running_bot
from tests.support.servers import start_redis
from tests.support.serving import Served, creditgate_serve
from tests.support.settings import OPERATOR_TOKEN, make_settings

WS = "benchext"
APP = f"{WS}_app1"
FREE = 500_000_000
MAX_BODY = 1 << 20


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(parent: int) -> int:
    """The one traffic worker: the child that listens (not multiprocessing's helpers)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return max((int(c) for c in children), key=lambda c: len(os.listdir(f"/proc/{c}/fd")))


def cases(size: int) -> dict[str, bytes]:
    """Body wire bytes (after the head) of each case, about ``size`` bytes of framing;
    an empty one stands for a plain body of ``MAX_BODY`` bytes with its length."""
    per, field, body = 10 * 1024, 8000, b"5\r\nhello\r\n"
    huge = b"v" * size
    return {
        "one 5-byte chunk, one extension of size": b"5;n=" + huge + b"\r\nhello\r\n0\r\n\r\n",
        "chunks of 1 byte, each a 10 KiB extension": b"".join(
            [b"1;n=%b\r\nx\r\n" % (b"v" * per)] * (size // per) + [b"0\r\n\r\n"]
        ),
        "leading zeros in the size line": b"0" * size + body + b"0\r\n\r\n",
        "last chunk with an extension of size": body + b"0;n=" + huge + b"\r\n\r\n",
        "one trailer field of size": body + b"0\r\nT: " + huge + b"\r\n\r\n",
        "trailer fields of 8 KB": body
        + b"0\r\n"
        + b"".join(b"t%d: %b\r\n" % (i, b"v" * field) for i in range(size // field))
        + b"\r\n",
        "plain: a 1 MiB body (Content-Length), the most": b"",
    }


async def one(
    host: str, port: int, head: bytes, wire: bytes, step: int, pause: float
) -> tuple[str, int, float]:
    """Send head + wire ``step`` bytes at a time (``pause`` s between): the answer's
    status line, the bytes the server took, seconds until answered or closed."""
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
    sent = 0
    began = time.monotonic()
    writer.write(head)
    answer = asyncio.ensure_future(reader.readline())
    try:
        view = memoryview(wire)
        while sent < len(wire) and not answer.done():
            writer.write(view[sent : sent + step])
            await writer.drain()
            sent += len(view[sent : sent + step])
            if pause:
                await asyncio.sleep(pause)
        line = await asyncio.wait_for(answer, 120)
    except (ConnectionError, TimeoutError) as exc:
        line = f"({type(exc).__name__})".encode()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return line.decode("latin-1").strip() or "(closed)", sent, time.monotonic() - began


def head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Channel-User-Id: u1\r\n"
        f"{extra}Transfer-Encoding: chunked\r\n\r\n"
    ).encode()


def row(*cols: object) -> None:
    name, port, answer, taken, cpu, wall, charged, bot = cols
    print(f"{name!s:48} {port!s:17} {answer!s:28} {taken!s:>12} {cpu!s:>6} {wall!s:>6} "
          f"{charged!s:>7} {bot!s:>3}")  # fmt: skip


async def measure(bot: Bot, rc: RedisClient, sv: Served, size: int, trickle_s: float) -> None:
    worker, parent = worker_pid(sv.proc.pid), sv.proc.pid
    tport, aport = URL(sv.traffic).port or 0, URL(sv.admin).port or 0
    auth = f"Authorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\n"
    up = f"/hooks/web/{APP}/up"
    ports = [
        ("traffic streamed", tport, worker, head(up, "")),
        ("traffic keyed", tport, worker, head(up, "Idempotency-Key: k\r\n")),
        ("admin", aport, parent, head("/v1/users", auth)),
    ]
    row("case", "port", "answer", "taken", "cpu s", "wall s", "charged", "bot")

    async def case(name: str, pname: str, port: int, pid: int, h: bytes, data: bytes,
                   step: int, pause: float) -> None:  # fmt: skip
        h = h.replace(b"Idempotency-Key: k", b"Idempotency-Key: k%d" % time.monotonic_ns())
        calls, credit, cpu = len(bot.calls), await free_credit(rc, WS), cpu_s(pid)
        status, taken, wall = await one("127.0.0.1", port, h, data, step, pause)
        await asyncio.sleep(0.5)  # the rest of the worker's work on it
        used, charged = cpu_s(pid) - cpu, credit - await free_credit(rc, WS)
        row(name[:48], pname, status[:28], f"{taken:,}", f"{used:.2f}", f"{wall:.1f}", charged,
            len(bot.calls) - calls)  # fmt: skip

    for name, wire in cases(size).items():
        for pname, port, pid, h in ports:
            if wire:
                await case(name, pname, port, pid, h, wire, 1 << 16, 0)
            else:
                plain = h.replace(b"Transfer-Encoding: chunked", b"Content-Length: %d" % MAX_BODY)
                await case(name, pname, port, pid, plain, b"x" * MAX_BODY, 1 << 16, 0)
    slow = b"5;n=" + b"v" * int(trickle_s / 0.1) + b"\r\nhello\r\n0\r\n\r\n"
    for pname, port, pid, h in ports:
        await case("trickled extension, 1 B / 0.1 s", pname, port, pid, h, slow, 1, 0.1)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=10.0, help="framing bytes a case sends")
    ap.add_argument("--server", default="fast", choices=["fast", "aiohttp"])
    ap.add_argument("--trickle-s", type=float, default=8.0, help="how long a trickle goes on")
    args = ap.parse_args()
    size = int(args.mb * 1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        redis = start_redis(Path(tmp) / "redis")
        rc = connect(redis.url)
        try:
            async with running_bot() as bot:
                app = {"product": "contact_center", "upstream_url": bot.url}
                await seed(rc, make_settings(redis.url, tmp), WS, {APP: app}, free=FREE)
                async with creditgate_serve(
                    redis.url, Path(tmp), workers=1, traffic_server=args.server,
                    operator_token=OPERATOR_TOKEN, body_timeout_s=3, body_linger_s=1,
                    max_body_bytes=MAX_BODY,
                ) as sv:  # fmt: skip
                    await asyncio.sleep(1)  # the worker's helpers started
                    print(f"server={args.server} framing={size:,} bytes a case")
                    await measure(bot, rc, sv, size, args.trickle_s)
        finally:
            await rc.aclose()
            redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
