"""A page of billing sessions reads Redis in bounded commands, however many are live.

A workspace's live sessions are one hash field each; a tenant with many channel users
(anyone may open a session under any ``X-Channel-User-Id``) makes the hash as large. One
command reading it whole (an ``HGETALL``, inside a script or not) holds the single-
threaded Redis for every tenant, on every page request, even ``limit=1``. Here the
commands a page request makes are recorded by ``MONITOR`` (from a second connection: it
shows the commands scripts run too) and each read is replayed afterwards, on the same
data, to count what it returns: none may return more than ``BOUND`` elements, where
4000 live sessions make an ``HGETALL`` return 8000. The pages are still exactly the
sessions in order (checked against the hash read whole by the test).

A read in steps is not one snapshot: an entry that a new session of the same
conversation displaces (``fld`` -> ``fld\\t<bsid>``) during the scan must still be listed.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage.batches import session_rows
from meter.usage.live_sessions import sessions_page
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws
from tests.support.metering import admitter
from tests.support.servers import RedisServer
from tests.support.servers.process import HOST
from tests.support.servers.resp import redis_command
from tests.support.settings import make_settings

BOUND = 1000  # elements one command may return (a reply flattened)
LIVE = 4000
HANG_S = 120.0  # a bound on a hang only
READS = {"HGETALL", "HKEYS", "HVALS", "HSCAN", "ZRANGE", "ZRANGEBYSCORE", "LRANGE",
         "SMEMBERS", "SSCAN", "ZSCAN", "KEYS", "SCAN", "HGET", "HMGET", "GET", "MGET"}  # fmt: skip
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(f"sqlite:///{tmp_path / 'creditgate.db'}"):
        yield s


def _unquote(arg: str) -> str:
    """An argument as MONITOR prints it (sdscatrepr), back to its text."""
    esc = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}
    out, i = [], 0
    while i < len(arg):
        c = arg[i]
        if c == "\\" and arg[i + 1] == "x":
            out.append(chr(int(arg[i + 2 : i + 4], 16)))
            i += 4
        elif c == "\\":
            out.append(esc[arg[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Monitor:
    """The commands Redis runs from ``start`` until a marker, as MONITOR reports them."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=HANG_S)
        self.f = self.sock.makefile("rb")
        self.sock.sendall(b"MONITOR\r\n")
        assert self.f.readline() == b"+OK\r\n"

    def until(self, marker: str) -> list[list[str]]:
        out = []
        while True:
            line = self.f.readline().decode()
            args = [_unquote(a) for a in _ARG.findall(line.partition("] ")[2])]
            if args[:2] == ["ECHO", marker]:
                self.sock.close()
                return out
            out.append(args)


def _elements(reply: Any) -> int:
    return sum(_elements(x) for x in reply) if isinstance(reply, list) else 1


async def _recorded(
    server: RedisServer, client: RedisClient, call: Callable[[], Awaitable[Any]]
) -> tuple[Any, list[tuple[int, list[str]]]]:
    """``call()``'s result, and each read command it made with what it returns (replayed
    on the same data once the call is over)."""
    mon = Monitor(server.port)
    got = await call()
    await client.echo("end-of-call")
    cmds = mon.until("end-of-call")
    sizes = [
        (_elements(redis_command(server.port, *c)), c) for c in cmds if c and c[0].upper() in READS
    ]
    return got, sizes


async def _all_live(client: RedisClient, ws: str, block_ms: int) -> list[tuple[int, str]]:
    """Every live session's (start, id), read whole: the test's own reference."""
    out = []
    for b in await client.zrange(keys.sessions_index_key(ws), 0, -1):
        items = await client.hgetall(keys.sessions_key(ws, int(b)))
        flat = [x for kv in items.items() for x in kv]
        out += [(r.start_ms, r.id) for r in session_rows(ws, 0, flat, block_ms)]
    return sorted(out)


def _opts(cfg: Any, clock: Clock, desc: bool) -> dict[str, Any]:
    return {
        "app_id": None, "app_ids": None, "channel": None, "desc": desc,
        "block_ms": int(cfg.session_block_s * 1000), "idle_ms": int(cfg.session_idle_s * 1000),
        "now_ms": int(clock.now * 1000),
    }  # fmt: skip


@pytest.mark.parametrize("desc", [False, True])
async def test_a_page_reads_no_more_than_a_bound_per_command(
    desc: bool, redis_server: RedisServer, rclient: RedisClient, store: Store
) -> None:
    cfg = make_settings(
        flush_bucket_s=60, flush_grace_s=1, rate_per_minute=100_000, rate_per_hour=1_000_000
    )
    clock = Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=10_000 * USD)
    adm = admitter(rclient, cfg, clock)
    for part in range(8):  # the real admission path; starts spread over 8 moments
        got = await asyncio.gather(
            *(adm.admit(w.apps[0], "web", f"u{part}-{i}") for i in range(LIVE // 8))
        )
        assert all(d.units == 1 for d in got)
        clock.advance(45)
    block_ms = int(cfg.session_block_s * 1000)
    expected = await _all_live(rclient, w.ws, block_ms)
    assert len(expected) == LIVE
    if desc:
        expected.reverse()
    lo, hi = int((clock.now - 86_400) * 1000), int((clock.now + 60) * 1000)
    opts = _opts(cfg, clock, desc)

    async def page(limit: int, cursor: str | None) -> Any:
        return await sessions_page(store, rclient, w.ws, lo, hi, cursor=cursor, limit=limit, **opts)

    first, sizes = await _recorded(redis_server, rclient, lambda: page(1, None))
    assert [(x.row.start_ms, x.row.id) for x in first.items] == expected[:1]
    worst = max(sizes, key=lambda s: s[0])
    assert worst[0] <= BOUND, f"one command returned {worst[0]} elements: {worst[1][:3]}"
    # Pages of 200 from the middle on: the same sessions, in the same order.
    seen, cursor = [], first.next_cursor
    for _ in range(3):
        p = await page(200, cursor)
        seen += [(x.row.start_ms, x.row.id) for x in p.items]
        cursor = p.next_cursor
    assert seen == expected[1:601]
    tail, _ = await _recorded(redis_server, rclient, lambda: page(200, None))
    assert [(x.row.start_ms, x.row.id) for x in tail.items] == expected[:200]


class _Interleaved(Redis):
    """A client that runs ``hook`` once, after the first HSCAN step of ``key`` that
    leaves more to scan: other traffic arriving in the middle of a scan."""

    key = ""
    hook: Callable[[], Awaitable[None]] | None = None

    async def hscan(self, name: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        got = await super().hscan(name, *args, **kwargs)
        if name == self.key and got[0] != 0 and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        return got


async def test_an_entry_displaced_during_the_scan_is_listed(
    redis_server: RedisServer, rclient: RedisClient, store: Store
) -> None:
    cfg = make_settings(
        flush_bucket_s=60,
        flush_grace_s=1,
        session_idle_s=60,
        rate_per_minute=100_000,
        rate_per_hour=1_000_000,
    )
    clock = Clock.past()  # on a whole hour: the next 15 minutes are one session bucket
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=1_000 * USD)
    adm = admitter(rclient, cfg, clock)
    users = [f"u{i}" for i in range(600)]
    first = await asyncio.gather(*(adm.admit(w.apps[0], "web", u) for u in users))
    assert all(d.units == 1 for d in first)
    before = {d.bsid for d in first}
    bucket = int(clock.now) // 900 * 900

    async def talk_again() -> None:
        # Past the idle end: a new conversation, so a new session in the same bucket,
        # which moves each first session's entry to a field of its own.
        clock.advance(61)
        again = await asyncio.gather(*(adm.admit(w.apps[0], "web", u) for u in users))
        assert all(d.units == 1 for d in again)

    reader = _Interleaved.from_url(redis_server.url)
    reader.key, reader.hook = keys.sessions_key(w.ws, bucket), talk_again
    try:
        lo, hi = int((clock.now - 3600) * 1000), int((clock.now + 3600) * 1000)
        # One read (a page as large as all): the one the new sessions came in the middle of.
        p = await sessions_page(
            store, reader, w.ws, lo, hi, cursor=None, limit=10_000, **_opts(cfg, clock, False)
        )
    finally:
        await reader.aclose()
    assert reader.hook is None  # it ran in the middle of the scan
    listed = {x.row.id for x in p.items}
    displaced = await rclient.hlen(keys.sessions_key(w.ws, bucket))
    assert displaced == 2 * len(users)  # every first session moved within the bucket
    assert not before - listed, f"{len(before - listed)} sessions missed"


@pytest.mark.parametrize("desc", [False, True])
async def test_a_page_reads_only_the_buckets_its_rows_can_come_from(
    desc: bool, redis_server: RedisServer, rclient: RedisClient, store: Store
) -> None:
    """Sessions in ten blocks two hours apart: a first page of 20 reads one bucket's hash
    (its rows are all there; the others' sessions all start after, or before, them)."""
    cfg = make_settings(flush_bucket_s=60, flush_grace_s=1)
    clock = Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"], pool=1_000 * USD)
    adm = admitter(rclient, cfg, clock)
    lo = int((clock.now - 60) * 1000)
    for part in range(10):
        got = await asyncio.gather(
            *(adm.admit(w.apps[0], "web", f"u{part}-{i}") for i in range(30))
        )
        assert all(d.units == 1 for d in got)
        clock.advance(7200)
    hi = int(clock.now * 1000)
    expected = await _all_live(rclient, w.ws, int(cfg.session_block_s * 1000))
    assert len(expected) == 300
    if desc:
        expected.reverse()
    p, sizes = await _recorded(
        redis_server,
        rclient,
        lambda: sessions_page(
            store, rclient, w.ws, lo, hi, cursor=None, limit=20, **_opts(cfg, clock, desc)
        ),
    )
    assert [(x.row.start_ms, x.row.id) for x in p.items] == expected[:20]
    read = {c[1] for _, c in sizes if c[0].upper() in {"HGETALL", "HSCAN"} and ":sr:" in c[1]}
    assert len(read) == 1, sorted(read)
