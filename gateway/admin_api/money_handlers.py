"""Handlers of the money routes: funds, plan-usage, usage series and billing sessions."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from aiohttp import web

from config.money import format_amount
from gateway.admin_api import report_schemas as r
from gateway.admin_api import schemas as s
from gateway.admin_api.http import Call, json_response
from meter import authz, credits
from meter.errors import InvalidInput
from meter.plan_usage import iso, plan_usage
from meter.store import UsagePoint
from meter.usage import usage

DAY_MS = 86_400_000
MAX_RANGE_MS = 400 * DAY_MS
MAX_HOURLY_MS = 62 * DAY_MS
MAX_SESSIONS = 10_000


async def add_funds(call: Call) -> web.Response:
    ws, _ = await authz.authorize_workspace(
        call.deps.store, call.principal, call.path("ws"), "funds.add"
    )
    body = call.parsed(s.FundsAdd)
    top = await credits.add_funds(
        call.deps,
        call.principal.actor,
        ws,
        body.amount,
        app_id=body.app_id,
        reference=body.reference,
    )
    e = top.entry
    out = s.FundsOut(
        workspace_id=ws.id,
        reference=body.reference or e.reference.removeprefix("funds:"),
        amount=format_amount(e.amount),
        app_id=e.app_id,
        created=top.created,
        created_at=iso(e.created_at) or "",
    )
    return json_response(out, 201 if top.created else 200)


async def get_plan_usage(call: Call) -> web.Response:
    ws, _ = await authz.authorize_workspace(
        call.deps.store, call.principal, call.path("ws"), "plan_usage.read"
    )
    d = call.deps
    view = await plan_usage(d.store, d.redis, d.settings, d.catalog, ws, d.now_ms())
    return json_response(r.PlanUsageOut.model_validate(view))


def parse_time(field: str, text: str) -> int:
    """Epoch milliseconds from epoch ms digits or an ISO 8601 date / date-time."""
    if text.isdigit() and len(text) <= 15:
        return int(text)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, "must be an ISO 8601 date or date-time, or epoch ms") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def time_range(call: Call, q: s.UsageQuery) -> tuple[int, int]:
    to_ms = parse_time("to", q.to) if q.to is not None else call.deps.now_ms()
    from_ms = parse_time("from", q.from_) if q.from_ is not None else to_ms - 30 * DAY_MS
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
    q = call.query_as(s.UsageQuery)
    ws_id = call.path("ws")
    scope = await authz.usage_scope(call.deps.store, call.principal, ws_id, q.app_id)
    from_ms, to_ms = time_range(call, q)
    granularity = q.granularity or "day"
    if granularity == "hour" and to_ms - from_ms > MAX_HOURLY_MS:
        raise InvalidInput("granularity", "hourly series may span at most 62 days")
    # Flushed usage from the store plus what Redis has not flushed yet.
    series = await usage(
        call.deps.store,
        call.deps.redis,
        ws_id,
        from_ms,
        to_ms,
        granularity,
        q.app_id,
        q.channel,
        include_live=True,
        app_ids=scope,
    )
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
        }
    )
    return json_response(out)


def _cell(value: object) -> object:
    """Channel user ids come from outside: keep spreadsheets from running them as formulas."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


async def get_sessions(call: Call) -> web.StreamResponse:
    q = call.query_as(s.UsageQuery)
    ws_id = call.path("ws")
    scope = await authz.usage_scope(call.deps.store, call.principal, ws_id, q.app_id)
    if q.granularity is not None:
        raise InvalidInput("granularity", "not a parameter of the sessions route")
    from_ms, to_ms = time_range(call, q)
    rows = await call.deps.store.sessions(
        ws_id,
        from_ms,
        to_ms,
        app_id=q.app_id,
        app_ids=scope,
        channel=q.channel,
        limit=MAX_SESSIONS + 1,
    )
    truncated = len(rows) > MAX_SESSIONS
    items = [
        r.SessionOut(
            app_id=x.app_id,
            channel=x.channel,
            channel_user=x.channel_user,
            billing_session_id=x.id,
            start=iso(x.start_ms) or "",
            end=iso(x.end_ms) or "",
            messages=x.messages,
            amount=format_amount(x.amount),
        )
        for x in rows[:MAX_SESSIONS]
    ]
    if "text/csv" in call.request.headers.get("Accept", ""):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        fields = list(r.SessionOut.model_fields)
        writer.writerow(fields)
        for item in items:
            writer.writerow([_cell(getattr(item, f)) for f in fields])
        return web.Response(text=buf.getvalue(), content_type="text/csv")
    return json_response(r.SessionsOut(workspace_id=ws_id, sessions=items, truncated=truncated))
