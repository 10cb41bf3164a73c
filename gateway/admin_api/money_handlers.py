"""Handlers of the money routes: funds, plan-usage, usage series and billing sessions."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

from aiohttp import web
from redis.exceptions import RedisError

from config.money import format_amount
from gateway.admin_api import list_schemas as ls
from gateway.admin_api import query_schemas as qs
from gateway.admin_api import report_schemas as r
from gateway.admin_api.csv_stream import stream_csv
from gateway.admin_api.http import Call, json_response
from meter.accounts import authz, credits
from meter.accounts.pages import limit_of
from meter.accounts.plan_usage import plan_usage
from meter.errors import Forbidden, InvalidInput, MeteringUnavailable, NotFound, Unauthorized
from meter.store import UsagePoint
from meter.timestamps import iso
from meter.usage.csv_text import formula_safe
from meter.usage.live_sessions import Listed, every_session, sessions_page
from meter.usage.series import usage

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
MAX_RANGE_MS = 400 * DAY_MS
MAX_HOURLY_MS = 62 * DAY_MS


async def add_funds(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(r.FundsAdd)
    top = await credits.add_funds(
        call.deps,
        call.principal.actor,
        ws,
        body.amount,
        app_id=body.app_id,
        reference=body.reference,
    )
    e = top.entry
    out = r.FundsOut(
        workspace_id=ws.id,
        reference=body.reference,
        amount=format_amount(e.amount),
        app_id=e.app_id,
        created=top.created,
        created_at=iso(e.created_at) or "",
    )
    return json_response(out, 201 if top.created else 200)


async def get_plan_usage(call: Call) -> web.Response:
    ws = call.workspace
    d = call.deps
    view = await plan_usage(d.store, d.redis, d.settings, d.catalog, ws, d.now_ms())
    return json_response(r.PlanUsageOut.model_validate(view))


def parse_time(field: str, text: str) -> int:
    """Epoch ms of a query time (bounded, see :func:`query_schemas.parse_time`), or a 422
    naming ``field``; for callers without a query schema (the console)."""
    try:
        return qs.parse_time(text)
    except ValueError as exc:
        raise InvalidInput(field, str(exc)) from None


def time_range(call: Call, q: qs.UsageQuery) -> tuple[int, int]:
    # Both were checked by the query schema: parse_time cannot fail here.
    to_ms = qs.parse_time(q.to) if q.to is not None else call.deps.now_ms()
    from_ms = (
        qs.parse_time(q.from_) if q.from_ is not None else max(qs.MIN_TIME_MS, to_ms - 30 * DAY_MS)
    )
    if from_ms >= to_ms:
        raise InvalidInput("from", "must be before to")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise InvalidInput("from", "the range may span at most 400 days")
    return from_ms, to_ms


def point_out(p: UsagePoint) -> r.UsagePointOut:
    return r.UsagePointOut(
        start=iso(p.start) or "",
        sessions=p.sessions,
        requests=p.requests,
        notifications=p.notifications,
        messages=p.messages,
        amount=format_amount(p.amount),
        amount_free=format_amount(p.amount_free),
        amount_paid=format_amount(p.amount_app + p.amount_pool),
        amount_invoiced=format_amount(p.amount_invoiced),
        refused={k: v for k, v in p.refused.items() if v},
    )


def _sum(points: list[UsagePoint], start: int) -> UsagePoint:
    units: dict[str, int] = {}
    refused: dict[str, int] = {}
    for p in points:
        for k, v in p.units.items():
            units[k] = units.get(k, 0) + v
        for k, v in p.refused.items():
            refused[k] = refused.get(k, 0) + v
    return UsagePoint(
        start=start,
        units=units,
        messages=sum(p.messages for p in points),
        amount_free=sum(p.amount_free for p in points),
        amount_app=sum(p.amount_app for p in points),
        amount_pool=sum(p.amount_pool for p in points),
        amount_invoiced=sum(p.amount_invoiced for p in points),
        refused=refused,
    )


async def get_usage(call: Call) -> web.Response:
    q = call.query_as(qs.UsageQuery)
    ws_id = call.path("ws")
    scope = await authz.usage_scope(call.deps.store, call.principal, ws_id, q.app_id, call.roles)
    from_ms, to_ms = time_range(call, q)
    granularity = q.granularity or "day"
    if granularity == "hour" and to_ms - from_ms > MAX_HOURLY_MS:
        raise InvalidInput("granularity", "hourly series may span at most 62 days")
    # Flushed usage from the store plus what Redis has not flushed yet; when Redis does
    # not answer, the stored history still is (marked: live figures unavailable).
    live = True
    try:
        series = await usage(
            call.deps.store, call.deps.redis, ws_id, from_ms, to_ms, granularity,
            q.app_id, q.channel, include_live=True, app_ids=scope,
        )  # fmt: skip
    except (RedisError, OSError, MeteringUnavailable) as exc:
        log.warning("usage of %s: redis unavailable, stored usage only: %r", ws_id, exc)
        live = False
        series = await usage(
            call.deps.store, None, ws_id, from_ms, to_ms, granularity,
            q.app_id, q.channel, include_live=False, app_ids=scope,
        )  # fmt: skip
    out = r.UsageOut.model_validate(
        {
            "workspace_id": ws_id,
            "from": iso(from_ms),
            "to": iso(to_ms),
            "granularity": granularity,
            "app_id": q.app_id,
            "channel": q.channel,
            "series": [point_out(p) for p in series],
            "totals": point_out(_sum(series, from_ms)),
            "live": live,
        }
    )
    return json_response(out)


def _cell(value: object) -> object:
    return formula_safe(value) if isinstance(value, str) else value


async def get_sessions(call: Call) -> web.StreamResponse:
    q = call.query_as(ls.SessionsQuery)
    ws_id = call.path("ws")
    scope = await authz.usage_scope(call.deps.store, call.principal, ws_id, q.app_id, call.roles)
    if q.granularity is not None:
        raise InvalidInput("granularity", "not a parameter of the sessions route")
    from_ms, to_ms = time_range(call, q)
    csv_wanted = "text/csv" in call.request.headers.get("Accept", "")
    d = call.deps
    block_ms = int(d.settings.session_block_s * 1000)
    idle_ms = int(d.settings.session_idle_s * 1000)
    if csv_wanted and q.cursor is None and q.limit is None:
        # A CSV without paging arguments is the whole range, streamed page by page: a
        # snapshot of the sessions begun before the stream did (a `to` in the future
        # lists no session flushed while the stream runs), each page after the first
        # written only while the caller may still read it (csv_stream).
        now_ms = d.now_ms()
        pages = every_session(
            d.store, d.redis, ws_id, from_ms, min(to_ms, now_ms), app_id=q.app_id,
            app_ids=scope, channel=q.channel, desc=q.order == "desc", block_ms=block_ms,
            idle_ms=idle_ms, now_ms=now_ms,
        )  # fmt: skip

        async def allowed() -> bool:
            assert call.again is not None
            try:
                principal, grant = await call.again()
                now = await authz.usage_scope(d.store, principal, ws_id, q.app_id, grant.roles)
            except (Unauthorized, Forbidden, NotFound):
                return False
            return now == scope

        return await stream_csv(
            call.request, _csv_parts(pages), allowed=allowed,
            write_timeout_s=d.settings.export_stream_timeout_s,
        )  # fmt: skip
    found = await sessions_page(
        d.store, d.redis, ws_id, from_ms, to_ms,
        app_id=q.app_id, app_ids=scope, channel=q.channel, cursor=q.cursor,
        limit=limit_of(q.limit), desc=q.order == "desc",
        block_ms=block_ms, idle_ms=idle_ms, now_ms=d.now_ms(),
    )  # fmt: skip
    items = [_session_out(x) for x in found.items]
    if csv_wanted:
        headers = {"X-Next-Cursor": found.next_cursor} if found.next_cursor else None
        text = _csv_lines(items, header=True)
        return web.Response(text=text, content_type="text/csv", headers=headers)
    out = r.SessionsOut(
        workspace_id=ws_id,
        sessions=items,
        truncated=found.next_cursor is not None,
        next_cursor=found.next_cursor,
        live=found.live,
    )
    return json_response(out)


def _session_out(x: Listed) -> r.SessionOut:
    return r.SessionOut(
        app_id=x.row.app_id,
        channel=x.row.channel,
        channel_user=x.row.channel_user,
        billing_session_id=x.row.id,
        start=iso(x.row.start_ms) or "",
        end=iso(x.row.end_ms) or "",
        messages=x.row.messages,
        amount=format_amount(x.row.amount),
        open=x.open,
    )


def _csv_lines(items: list[r.SessionOut], *, header: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    fields = list(r.SessionOut.model_fields)
    if header:
        writer.writerow(fields)
    for item in items:
        writer.writerow([_cell(getattr(item, f)) for f in fields])
    return buf.getvalue()


async def _csv_parts(pages: AsyncGenerator[list[Listed], None]) -> AsyncGenerator[str, None]:
    """Every page as CSV rows, the first with the header row (even when empty)."""
    async with aclosing(pages):
        first: list[Listed] = await anext(pages, [])
        yield _csv_lines([_session_out(x) for x in first], header=True)
        async for page in pages:
            yield _csv_lines([_session_out(x) for x in page], header=False)
