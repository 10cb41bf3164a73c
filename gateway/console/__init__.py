"""The owner's console at ``/ui``: a static single-page app, its sign-in session, and
the one data route the API lacks (usage charts as server-rendered SVG, and their CSV).

Everything else the console shows comes from the admin API under ``/v1``, called with
the session cookie (:mod:`gateway.console.session`).
"""

from __future__ import annotations

import csv
import io
import logging
from importlib import resources
from pathlib import Path

import orjson
from aiohttp import web
from redis.exceptions import RedisError

from config.money import format_amount
from gateway import appkeys
from gateway.admin_api.money_handlers import DAY_MS, MAX_RANGE_MS, parse_time
from gateway.console import charts, session
from gateway.problems import Problem
from meter.accounts import authz
from meter.errors import Forbidden, InvalidInput, MeteringUnavailable, NotFound
from meter.redis_layer import keys
from meter.store import Store
from meter.timestamps import iso
from meter.usage.breakdown import METRICS, breakdown, periods_of
from meter.usage.csv_text import formula_safe

log = logging.getLogger(__name__)
STATIC = Path(str(resources.files("gateway").joinpath("static")))
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
GRANULARITIES = ("hour", "day", "week", "month")
BYS = ("total", "app", "channel")
NO_STORE = ("/ui/api/", "/ui/session")  # answers no cache may keep, whatever their status


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/ui" or request.path.startswith("/ui/"):
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith(NO_STORE):
        # A user's data (a chart's CSV download too) and every error: never in a cache.
        response.headers["Cache-Control"] = "no-store"


def _param(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name, default)
    if value not in allowed:
        raise InvalidInput(name, f"must be one of {', '.join(allowed)}")
    return value


async def usage_chart(request: web.Request) -> web.Response:
    """``GET /ui/api/usage-chart?ws&from&to&granularity&metric&by&app_id&channel&format``:
    the chart's series with its SVG (``json``), or exactly those numbers as ``csv``."""
    principal = await session.require(request)
    try:
        return await _usage_chart(request, principal)
    except InvalidInput as exc:
        raise Problem(422, "invalid_input", "Invalid input", str(exc),
                      extra={"field": exc.field}) from None  # fmt: skip
    except Forbidden as exc:
        raise Problem(403, exc.code, "Forbidden", str(exc)) from None
    except NotFound as exc:
        raise Problem(404, "not_found", "Not found", f"no {exc.kind} {exc.ident!r}") from None


async def _usage_chart(request: web.Request, principal: authz.Principal) -> web.Response:
    q = request.query
    ws = q.get("ws", "")
    if not keys.ID_RE.fullmatch(ws):
        raise NotFound("workspace", ws)
    store: Store = request.config_dict[appkeys.STORE]
    # Authorization before validation: a workspace the caller may not see is 404 whatever
    # else the query says.
    _, roles = await authz.authorize_workspace(store, principal, ws, "usage.read")
    app_id = q.get("app_id") or None
    if app_id is not None and not keys.APP_RE.fullmatch(app_id):
        raise InvalidInput("app_id", "must be an app id")
    channel = q.get("channel") or None
    if channel is not None and not keys.CHANNEL_RE.fullmatch(channel):
        raise InvalidInput("channel", "must be a channel name")
    scope = await authz.usage_scope(store, principal, ws, app_id, roles)
    now = int(request.config_dict[appkeys.CLOCK]() * 1000)
    to_ms = parse_time("to", q["to"]) if q.get("to") else now
    from_ms = parse_time("from", q["from"]) if q.get("from") else to_ms - 30 * DAY_MS
    if not 0 <= from_ms < to_ms or to_ms - from_ms > MAX_RANGE_MS:
        raise InvalidInput("from", "must be before to, at most 400 days earlier")
    granularity = _param(request, "granularity", GRANULARITIES, "day")
    if len(periods_of(from_ms, to_ms, granularity)) > 800:
        raise InvalidInput("granularity", "too many periods for one chart; pick a coarser one")
    metric = _param(request, "metric", METRICS, "sessions")
    by = _param(request, "by", BYS, "total")
    fmt = _param(request, "format", ("json", "csv"), "json")
    size = _param(request, "size", ("full", "spark"), "full")
    redis = request.config_dict[appkeys.REDIS]
    try:
        data = await breakdown(
            store, redis, ws, from_ms, to_ms, granularity, metric, by,
            app_id=app_id, app_ids=scope, channel=channel,
        )  # fmt: skip
    except (RedisError, OSError, MeteringUnavailable) as exc:
        log.warning("console chart of %s: redis unavailable, stored usage only: %r", ws, exc)
        data = await breakdown(
            store, None, ws, from_ms, to_ms, granularity, metric, by,
            app_id=app_id, app_ids=scope, channel=channel,
        )  # fmt: skip
    names = {a.id: a.name for a in await store.list_apps(ws)} if by == "app" else {}
    is_money = metric == "amount"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        labels = list(data.series)
        w.writerow(["period_start", *(formula_safe(names.get(k, k)) for k in labels)])
        for i, start in enumerate(data.periods):
            row = [data.series[k][i] for k in labels]
            cells = [format_amount(v) if is_money else str(v) for v in row]
            w.writerow([iso(start), *cells])
        name = f"usage-{ws}-{metric}-by-{by}-{granularity}.csv"
        return web.Response(
            text=buf.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    title = f"{metric.capitalize()} per {granularity}" + (f" by {by}" if by != "total" else "")
    if size == "spark":
        svg = charts.sparkline(next(iter(data.series.values()), []), title)
    else:
        svg = charts.bars(
            data.periods, data.series, granularity=granularity, is_money=is_money,
            title=title, names=names,
        )  # fmt: skip
    body = {
        "periods": [iso(p) for p in data.periods],
        "series": [
            {"key": k, "label": names.get(k, k), "values": v, "total": sum(v)}
            for k, v in data.series.items()
        ],
        "money": is_money,
        "live": data.live,
        "svg": svg,
    }
    return web.Response(
        body=orjson.dumps(body), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def setup_console(app: web.Application) -> None:
    """Mount ``/ui`` on the admin application and let its cookie authenticate ``/v1``."""
    app.middlewares.append(session.cookie_auth)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/session", session.current)
    app.router.add_post("/ui/session", session.sign_in)
    app.router.add_delete("/ui/session", session.sign_out)
    app.router.add_get("/ui/api/usage-chart", usage_chart)
    app.router.add_static("/ui/static", STATIC, follow_symlinks=False)
