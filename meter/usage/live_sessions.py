"""Billing sessions for the API: the durable store merged with Redis's live records.

The flusher writes a session's record some time after its block closes, so the store
alone would show nothing for the sessions that ``/usage`` (which reads live aggregates)
already counts. Redis's records (live hashes and unacked claimed copies, one
``peek_sessions.lua`` call) are merged in by billing-session id, the live one winning as
the newest snapshot. A session is *open* while its block is running and its
conversation has not gone idle. When Redis cannot answer, the store's rows are served
and the page says live figures are unavailable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from meter.accounts.pages import decode, encode
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register, run
from meter.store import SessionRow, Store
from meter.usage.batches import SessionEntry, session_row

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Listed:
    row: SessionRow
    open: bool


@dataclass(frozen=True, slots=True)
class SessionsPage:
    items: list[Listed]
    next_cursor: str | None
    live: bool  # False: Redis did not answer, only stored sessions are listed


async def redis_sessions(
    client: RedisClient,
    ws: str,
    from_ms: int,
    to_ms: int,
    *,
    block_ms: int,
    idle_ms: int,
    now_ms: int,
) -> dict[str, Listed]:
    """Sessions in Redis that started in ``[from_ms, to_ms)``, by billing-session id."""
    sb = max(1, block_ms // 1000)  # session buckets are as wide as a block (admit.lua)
    lo, hi = (from_ms // 1000 // sb - 1) * sb, (to_ms // 1000 // sb) * sb
    snapshot: list[Any] = await run(
        register(client, "peek_sessions"), client, keys.ws_keys(ws), [lo, hi]
    )
    out: dict[str, tuple[int, Listed]] = {}
    for _bucket, gen, items in snapshot:
        fields, values = items[0::2], items[1::2]
        for i in range(len(values)):
            row = session_row(ws, int(gen), fields[i], values[i], block_ms)
            if row is None or not from_ms <= row.start_ms < to_ms:
                continue
            field = fields[i].decode() if isinstance(fields[i], bytes) else str(fields[i])
            current = int(gen) == 0 and field.count("\t") == 2  # not displaced, not a copy
            ends = SessionEntry.parse(values[i]).block_start(block_ms) + block_ms
            is_open = current and now_ms < row.end_ms + idle_ms and now_ms < ends
            rank = 1 << 62 if int(gen) == 0 else int(gen)  # live beats any claimed copy
            if row.id not in out or out[row.id][0] < rank:
                out[row.id] = (rank, Listed(row, is_open))
    return {k: v for k, (_, v) in out.items()}


async def sessions_page(
    store: Store,
    client: RedisClient | None,
    ws: str,
    from_ms: int,
    to_ms: int,
    *,
    app_id: str | None,
    app_ids: Collection[str] | None,
    channel: str | None,
    cursor: str | None,
    limit: int,
    desc: bool,
    block_ms: int,
    idle_ms: int,
    now_ms: int,
) -> SessionsPage:
    """One page of sessions ordered by ``(start, id)``, stored and live merged."""
    kind = "sessions-desc" if desc else "sessions"
    key = decode(kind, cursor, (int, str))
    after = (key[0], key[1]) if key else None
    stored = await store.sessions_page(
        ws, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel,
        after=after, desc=desc, limit=limit + 1,
    )  # fmt: skip
    merged = {r.id: Listed(r, False) for r in stored}
    found, live = await _live(
        client, ws, from_ms, to_ms, app_id, app_ids, channel,
        block_ms=block_ms, idle_ms=idle_ms, now_ms=now_ms,
    )  # fmt: skip
    for bsid, item in found.items():
        r = item.row
        if after is not None and ((r.start_ms, r.id) <= after if not desc else
                                  (r.start_ms, r.id) >= after):  # fmt: skip
            continue
        merged[bsid] = item
    items = sorted(merged.values(), key=_order, reverse=desc)
    if len(items) <= limit:
        return SessionsPage(items, None, live)
    last = items[limit - 1].row
    return SessionsPage(items[:limit], encode(kind, [last.start_ms, last.id]), live)


def _order(x: Listed) -> tuple[int, str]:
    return x.row.start_ms, x.row.id


async def _live(
    client: RedisClient | None,
    ws: str,
    from_ms: int,
    to_ms: int,
    app_id: str | None,
    app_ids: Collection[str] | None,
    channel: str | None,
    *,
    block_ms: int,
    idle_ms: int,
    now_ms: int,
) -> tuple[dict[str, Listed], bool]:
    """Redis's sessions that pass the filters, and whether Redis answered."""
    if client is None:
        return {}, False
    try:
        found = await redis_sessions(
            client, ws, from_ms, to_ms, block_ms=block_ms, idle_ms=idle_ms, now_ms=now_ms
        )
    except (RedisError, OSError, MeteringUnavailable) as exc:
        log.warning("sessions of %s: redis unavailable, stored rows only: %r", ws, exc)
        return {}, False
    return {
        bsid: item
        for bsid, item in found.items()
        if (app_id is None or item.row.app_id == app_id)
        and (app_ids is None or item.row.app_id in app_ids)
        and (channel is None or item.row.channel == channel)
    }, True


async def every_session(
    store: Store,
    client: RedisClient | None,
    ws: str,
    from_ms: int,
    to_ms: int,
    *,
    app_id: str | None,
    app_ids: Collection[str] | None,
    channel: str | None,
    desc: bool,
    block_ms: int,
    idle_ms: int,
    now_ms: int,
    page: int = 1000,
) -> AsyncGenerator[list[Listed], None]:
    """Every session of the range, stored and live merged as :func:`sessions_page` does,
    in pages of about ``page``: the store read page by page (keyset), Redis once, first.

    A session Redis has is listed as Redis has it (its stored copy skipped, wherever the
    copy sorts), so one flushed while the store is read is listed once.
    """
    found, _ = await _live(
        client, ws, from_ms, to_ms, app_id, app_ids, channel,
        block_ms=block_ms, idle_ms=idle_ms, now_ms=now_ms,
    )  # fmt: skip
    live = deque(sorted(found.values(), key=_order, reverse=desc))
    after: tuple[int, str] | None = None
    while True:
        stored = await store.sessions_page(
            ws, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel,
            after=after, desc=desc, limit=page,
        )  # fmt: skip
        out: list[Listed] = []
        for r in stored:
            key = (r.start_ms, r.id)
            while live and (_order(live[0]) > key if desc else _order(live[0]) < key):
                out.append(live.popleft())
            if r.id not in found:
                out.append(Listed(r, False))
        if len(stored) < page:
            out.extend(live)
            if out:
                yield out
            return
        after = (stored[-1].start_ms, stored[-1].id)
        yield out
