"""Billing sessions for the API: the durable store merged with Redis's live records.

The flusher writes a session's record some time after its block closes, so the store
alone would show nothing for the sessions that ``/usage`` (which reads live aggregates)
already counts. Redis's records (live hashes and unacked claimed copies, read in bounded
steps by :mod:`meter.usage.live_scan`, before the store) are merged in by billing-session
id, the live one winning as the newest snapshot. A session is *open* while its block is
running and its conversation has not gone idle. When Redis cannot answer, the store's
rows are served and the page says live figures are unavailable.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass

from redis.exceptions import RedisError

from meter.accounts.pages import decode, encode
from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient
from meter.store import SessionRow, Store
from meter.usage.live_scan import Listed, Window, live_sessions, order

__all__ = ["Listed", "SessionsPage", "every_session", "sessions_page"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionsPage:
    items: list[Listed]
    next_cursor: str | None
    live: bool  # False: Redis did not answer, only stored sessions are listed


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
    # Redis first, then the store: a session flushed meanwhile is in one or the other.
    found, live = await _live(
        client, ws, Window(from_ms, to_ms, _wanted(app_id, app_ids, channel), after,
                           limit + 1, desc, block_ms, idle_ms, now_ms),
    )  # fmt: skip
    stored = await store.sessions_page(
        ws, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel,
        after=after, desc=desc, limit=limit + 1,
    )  # fmt: skip
    merged = {r.id: Listed(r, False) for r in stored}
    merged.update(found)
    items = sorted(merged.values(), key=order, reverse=desc)
    if len(items) <= limit:
        return SessionsPage(items, None, live)
    last = items[limit - 1].row
    return SessionsPage(items[:limit], encode(kind, [last.start_ms, last.id]), live)


def _wanted(
    app_id: str | None, app_ids: Collection[str] | None, channel: str | None
) -> Callable[[SessionRow], bool]:
    def wanted(r: SessionRow) -> bool:
        return (
            (app_id is None or r.app_id == app_id)
            and (app_ids is None or r.app_id in app_ids)
            and (channel is None or r.channel == channel)
        )

    return wanted


async def _live(client: RedisClient | None, ws: str, w: Window) -> tuple[dict[str, Listed], bool]:
    """Redis's sessions of ``w``, and whether Redis answered."""
    if client is None:
        return {}, False
    try:
        return await live_sessions(client, ws, w), True
    except (RedisError, OSError, MeteringUnavailable) as exc:
        log.warning("sessions of %s: redis unavailable, stored rows only: %r", ws, exc)
        return {}, False


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
        client, ws, Window(from_ms, to_ms, _wanted(app_id, app_ids, channel), None,
                           None, desc, block_ms, idle_ms, now_ms),
    )  # fmt: skip
    live = deque(sorted(found.values(), key=order, reverse=desc))
    after: tuple[int, str] | None = None
    while True:
        stored = await store.sessions_page(
            ws, from_ms, to_ms, app_id=app_id, app_ids=app_ids, channel=channel,
            after=after, desc=desc, limit=page,
        )  # fmt: skip
        out: list[Listed] = []
        for r in stored:
            key = (r.start_ms, r.id)
            while live and (order(live[0]) > key if desc else order(live[0]) < key):
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
