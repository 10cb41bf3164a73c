"""Billing sessions Redis has not flushed, read in bounded steps.

A session bucket (``P:sr:<b>``, live; ``P:c:sr:<b>:<gen>``, a claimed copy) holds one
field per billing session, so a workspace with many channel users has hashes as large.
They are read with ``HSCAN ... COUNT SCAN_COUNT``, never in one command (an ``HGETALL``
of a tenant-sized hash, or one script reading them all, holds the single-threaded Redis
for every tenant), and only the ``limit`` first rows past the caller's cursor are kept.

One script read one snapshot; a read in steps holds these instead:

- A bucket's live hash is read first, then its claim (``HGET P:cl sr:<b>``), then the
  claimed copy: a claim taken during the live read (a ``RENAME``) left the rest in that
  copy. A copy acked before it is read is in the store, which callers read after Redis.
- ``HSCAN`` returns every field present for the whole scan (with its value of some
  moment of it). A field added during it may be missed: a session opened meanwhile
  (fine: it began after the read did), or an entry *displaced*: a new session of the
  same conversation field in the same bucket moves the old entry to ``fld\\t<bsid>``
  (admit_rules.lua ``write_session``). The new session's id is above the workspace's id
  counter read before the scan (``P:ws`` ``seq``; a session takes the next id), so a live
  entry seen with a newer id (or an id of another form) has its bucket scanned once
  more: whatever was displaced during the first scan is there for all of the second.
- Rows of different moments merge as before: by billing-session id, live over a claimed
  copy, a later claim over an earlier.

Which buckets are read: those whose sessions may start in the range (as before: a
session starts within a block or so of its bucket), narrowed by the cursor, and, once
``limit`` rows are kept, none whose sessions all start past the last of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import SessionRow
from meter.usage.batches import SessionEntry, session_row

SCAN_COUNT = 200  # fields asked of one HSCAN (a hint: about as many come back)
INDEX_PAGE = 500  # bucket starts asked of one ZRANGEBYSCORE / HSCAN of the claims
SKEW_MS = 120_000  # a session's start may precede its block's bucket (clock steps)
LIVE = 1 << 62  # the rank of a live entry: above any claim's gen
_BSID = re.compile(rb"^s(\d+)$")


@dataclass(frozen=True, slots=True)
class Listed:
    row: SessionRow
    open: bool


def order(x: Listed) -> tuple[int, str]:
    return x.row.start_ms, x.row.id


@dataclass(slots=True)
class Best:
    """The ``limit`` first rows by ``(start, id)`` (newest first with ``desc``; every
    row with ``limit`` None), one per billing session: its entry of the highest rank."""

    limit: int | None
    desc: bool
    items: dict[str, tuple[int, Listed]] = field(default_factory=dict)
    bound: tuple[int, str] | None = None  # a row past it is not among the first

    def _past(self, key: tuple[int, str]) -> bool:
        b = self.bound
        return b is not None and (key < b if self.desc else key > b)

    def offer(self, rank: int, item: Listed) -> None:
        if self._past(order(item)):
            return
        had = self.items.get(item.row.id)
        if had is None or had[0] < rank:
            self.items[item.row.id] = (rank, item)
        if self.limit is not None and len(self.items) > 2 * self.limit + SCAN_COUNT:
            self._trim()

    def _trim(self) -> None:
        assert self.limit is not None
        kept = sorted(self.items.values(), key=lambda v: order(v[1]), reverse=self.desc)
        kept = kept[: self.limit]
        self.items = {v[1].row.id: v for v in kept}
        if len(kept) == self.limit:
            self.bound = order(kept[-1][1])

    def edge(self) -> int | None:
        """The start of the last row kept once ``limit`` are, else None."""
        if self.limit is None or len(self.items) < self.limit:
            return None
        self._trim()
        return self.bound[0] if self.bound is not None else None

    def rows(self) -> dict[str, Listed]:
        if self.limit is not None:
            self._trim()
        return {k: v for k, (_, v) in self.items.items()}


@dataclass(frozen=True, slots=True)
class Window:
    """What a read wants: sessions starting in ``[from_ms, to_ms)`` that ``wanted``
    accepts, past the key ``after``, the first ``limit`` of them in the order ``desc``
    says."""

    from_ms: int
    to_ms: int
    wanted: Callable[[SessionRow], bool]
    after: tuple[int, str] | None
    limit: int | None
    desc: bool
    block_ms: int
    idle_ms: int
    now_ms: int


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _bytes(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


async def _bucket_starts(
    client: RedisClient, ws: str, lo: int, hi: int
) -> tuple[set[int], set[int]]:
    """Live buckets (the index) and claimed ones (``P:cl``) of ``lo..hi``, page by page."""
    out: set[int] = set()
    claimed: set[int] = set()
    floor = lo
    while True:
        raw = await client.zrangebyscore(
            keys.sessions_index_key(ws), floor, hi, start=0, num=INDEX_PAGE
        )
        got = [int(_text(b)) for b in raw if isinstance(b, bytes | str)]
        out.update(got)
        if len(raw) < INDEX_PAGE:
            break
        floor = got[-1] + 1  # buckets are scored with their start (whole seconds)
    cursor: int = 0
    while True:
        cursor, reg = await client.hscan(
            keys.claims_key(ws), cursor, match="sr:*", count=INDEX_PAGE
        )
        for name in reg if isinstance(reg, dict) else ():
            b = int(_text(name).partition(":")[2])
            if lo <= b <= hi:
                claimed.add(b)
        if cursor == 0:
            return out, claimed


class _Reader:
    def __init__(self, client: RedisClient, ws: str, w: Window, seq: int) -> None:
        self.client, self.ws, self.w, self.seq = client, ws, w, seq
        self.best = Best(w.limit, w.desc)

    async def scan(self, key: str, gen: int) -> bool:
        """Offer the sessions of one hash; True when a live entry is newer than ``seq``."""
        newer, cursor = False, 0
        while True:
            cursor, chunk = await self.client.hscan(key, cursor, count=SCAN_COUNT)
            for f, v in chunk.items() if isinstance(chunk, dict) else ():
                newer = self.offer(gen, _bytes(f), _bytes(v)) or newer
            if cursor == 0:
                return newer

    def offer(self, gen: int, f: bytes, v: bytes) -> bool:
        w = self.w
        newer = False
        if gen == 0:
            m = _BSID.match(v.split(b",", 4)[3]) if v.count(b",") >= 4 else None
            newer = m is None or int(m.group(1)) > self.seq
        row = session_row(self.ws, gen, f, v, w.block_ms)
        if row is None or not w.from_ms <= row.start_ms < w.to_ms or not w.wanted(row):
            return newer
        key, a = (row.start_ms, row.id), w.after
        if a is not None and (key >= a if w.desc else key <= a):
            return newer
        current = gen == 0 and _text(f).count("\t") == 2  # not displaced, not a copy
        ends = SessionEntry.parse(v).block_start(w.block_ms) + w.block_ms
        is_open = current and w.now_ms < row.end_ms + w.idle_ms and w.now_ms < ends
        self.best.offer(LIVE if gen == 0 else gen, Listed(row, is_open))
        return newer

    async def bucket(self, b: int, live: bool) -> None:
        if live and await self.scan(keys.sessions_key(self.ws, b), 0):
            await self.scan(keys.sessions_key(self.ws, b), 0)  # see the module doc
        gen = await self.client.hget(keys.claims_key(self.ws), f"sr:{b}")
        if gen is not None:
            await self.scan(keys.claim_key(self.ws, "sr", b, int(gen)), int(gen))


async def live_sessions(client: RedisClient, ws: str, w: Window) -> dict[str, Listed]:
    """Sessions Redis holds for ``w``, by billing-session id."""
    lo_ms, hi_ms, a = w.from_ms, w.to_ms, w.after
    if a is not None and w.desc:
        hi_ms = min(hi_ms, a[0] + 1 + SKEW_MS)
    elif a is not None:
        lo_ms = max(lo_ms, a[0] - SKEW_MS)
    sb = max(1, w.block_ms // 1000)  # session buckets are as wide as a block (admit.lua)
    lo, hi = (lo_ms // 1000 // sb - 1) * sb, (hi_ms // 1000 // sb) * sb
    seq = int(await client.hget(keys.ws_key(ws), "seq") or 0)
    live, claimed = await _bucket_starts(client, ws, lo, hi)
    r = _Reader(client, ws, w, seq)
    for b in sorted(live | claimed, reverse=w.desc):
        edge = r.best.edge()
        # A session starts at most SKEW_MS before its bucket, and less than a block after
        # the bucket's last block start: none of this one's may be among the rows kept.
        if edge is not None and (
            (b + sb) * 1000 + w.block_ms + SKEW_MS <= edge if w.desc else b * 1000 - SKEW_MS > edge
        ):
            break
        await r.bucket(b, b in live)
    return r.best.rows()
