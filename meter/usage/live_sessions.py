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
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from meter.accounts.pages import decode, encode
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register, run
from meter.store import SessionRow, Store
from meter.usage.batches import SessionEntry, session_rows

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
        register(client, "peek_sessions"), client, [keys.ws_prefix(ws)], [lo, hi]
    )
    out: dict[str, tuple[int, Listed]] = {}
    for _bucket, gen, items in snapshot:
        fields, values = items[0::2], items[1::2]
        for i, row in enumerate(session_rows(ws, int(gen), items, block_ms)):
            if not from_ms <= row.start_ms < to_ms:
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
    live = True
    if client is not None:
        try:
            found = await redis_sessions(
                client, ws, from_ms, to_ms, block_ms=block_ms, idle_ms=idle_ms, now_ms=now_ms
            )
        except (RedisError, OSError, MeteringUnavailable) as exc:
            log.warning("sessions of %s: redis unavailable, stored rows only: %r", ws, exc)
            found, live = {}, False
        for bsid, item in found.items():
            r = item.row
            if app_id is not None and r.app_id != app_id:
                continue
            if app_ids is not None and r.app_id not in app_ids:
                continue
            if channel is not None and r.channel != channel:
                continue
            if after is not None and ((r.start_ms, r.id) <= after if not desc else
                                      (r.start_ms, r.id) >= after):  # fmt: skip
                continue
            merged[bsid] = item
    else:
        live = False
    items = sorted(merged.values(), key=lambda x: (x.row.start_ms, x.row.id), reverse=desc)
    if len(items) <= limit:
        return SessionsPage(items, None, live)
    last = items[limit - 1].row
    return SessionsPage(items[:limit], encode(kind, [last.start_ms, last.id]), live)
