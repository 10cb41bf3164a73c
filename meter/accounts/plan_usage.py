"""The plan-and-usage view of a workspace: credits, balances, allowed units, app statuses.

Live balances come from the Redis projection (what ``admit.lua`` decides with), the
accounts from the store. Free credits past their expiry count as lapsed here even
before the next admission records the lapse. Money is returned as decimal strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from config import Catalog, Settings
from config.catalog import PRODUCTS
from config.money import format_amount
from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.store import App, Store, Workspace
from meter.timestamps import iso

FundsStatus = Literal["using_free_credits", "sufficient_funds", "low_balance", "inactive"]


def unit_price(catalog: Catalog, plan: str, unit: str) -> int:
    """The highest price of ``unit`` among the plan's products: allowed counts stay safe."""
    prices = [catalog.price(plan, p).price for p in PRODUCTS if catalog.price(plan, p).unit == unit]
    return max(prices) if prices else catalog.price(plan, PRODUCTS[0]).price


def next_period_ms(now_ms: int) -> int:
    """Start of the next calendar month (UTC): enterprise renewal and billing period."""
    t = datetime.fromtimestamp(now_ms / 1000, UTC)
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def _app_view(
    app: App,
    *,
    plan: str,
    catalog: Catalog,
    settings: Settings,
    free: int,
    pool: int,
    app_balance: int,
    licence_left: dict[str, int] | None,
    free_expired: bool = False,
    low_threshold: int | None = None,
) -> tuple[dict[str, Any], str | None]:
    """One app's line and what its next unit draws from (``free``, ``paid`` or None)."""
    price = catalog.price(plan, app.product)
    view: dict[str, Any] = {
        "id": app.id,
        "name": app.name,
        "owner_id": app.owner_id,
        "product": app.product,
        "unit": price.unit,
        "unit_price": format_amount(price.price),
        "use_free_credits": app.use_free_credits,
        "suspended": app.suspended,
        "paid_balance": format_amount(app_balance),
    }
    status: FundsStatus
    source: str | None = None
    reason: str | None = None  # why an app is inactive (or low), for owners
    if licence_left is not None:  # enterprise: invoiced against a licence, never debited
        left = licence_left.get(app.product)
        ok = not app.suspended and left is not None and left > 0
        status = "sufficient_funds" if ok else "inactive"
        if app.suspended:
            reason = "suspended"
        elif left is None:
            reason = "not_licensed"
        elif left <= 0:
            reason = "usage_limit_reached"
        view.update(remaining=None, allowed_units=left if ok else 0)
    else:
        free_part = free if app.use_free_credits else 0
        paid = app_balance + pool
        remaining = free_part + paid
        if app.suspended or remaining < price.price:
            status = "inactive"
            if app.suspended:
                reason = "suspended"
            elif free_expired and app.use_free_credits:
                reason = "free_credits_expired"
            else:
                reason = "out_of_funds"
        else:
            paid_first = settings.deduction_order == "paid_first"
            source = "free" if free_part > 0 and (not paid_first or paid < price.price) else "paid"
            low = settings.low_balance_threshold if low_threshold is None else low_threshold
            if remaining < low:
                status, reason = "low_balance", "below_threshold"
            elif source == "free":
                status = "using_free_credits"
            else:
                status = "sufficient_funds"
        # Below zero after a payment was given back (meter/accounts/reversals.py): none.
        allowed = max(0, remaining) // price.price
        view.update(remaining=format_amount(remaining), allowed_units=allowed)
    view["status"] = status
    view["status_reason"] = reason
    return view, source


async def _licence_left(
    store: Store, redis: RedisClient, ws: Workspace, now_ms: int
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    period = billing_period(now_ms / 1000)
    left: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for li in await store.get_licences(ws.id):
        used = int(await redis.get(keys.usage_limit_key(ws.id, li.product, period)) or 0)
        left[li.product] = max(0, li.usage_limit - used)
        rows.append(
            {
                "product": li.product,
                "usage_limit": li.usage_limit,
                "used": used,
                "remaining": left[li.product],
                "per_minute": li.per_minute,
                "per_hour": li.per_hour,
                "period": period,
            }
        )
    return left, rows


FORECAST_DAYS = 7
DAY_MS = 86_400_000


async def burn_forecast(store: Store, ws_id: str, usable: int, now_ms: int) -> dict[str, Any]:
    """When the usable balance runs out at the last 7 days' rate of stored usage (what
    was debited from credits; flushed usage only, so a few minutes behind)."""
    since = now_ms - FORECAST_DAYS * DAY_MS
    spent_point = await store.usage_totals(ws_id, from_ms=since, to_ms=now_ms)
    spent = spent_point.amount_free + spent_point.amount_app + spent_point.amount_pool
    daily = spent // FORECAST_DAYS
    runs_out = None
    days_left = None
    if spent > 0:
        left_ms = max(0, usable) * FORECAST_DAYS * DAY_MS // spent
        runs_out = now_ms + left_ms
        days_left = left_ms // DAY_MS
    return {
        "window_days": FORECAST_DAYS,
        "spent": format_amount(spent),
        "daily_rate": format_amount(daily),
        "days_left": days_left,
        "runs_out_at": iso(runs_out),
    }


async def plan_usage(
    store: Store,
    redis: RedisClient,
    settings: Settings,
    catalog: Catalog,
    ws: Workspace,
    now_ms: int,
) -> dict[str, Any]:
    """Everything the dashboard's plan-and-usage page shows for ``ws`` at ``now_ms``."""
    bal = await projection.read_balances(redis, ws.id)
    expired = bal.free_expires_ms <= now_ms
    free = 0 if expired else bal.free
    lapsed = bal.lapsed + (bal.free if expired else 0)
    paid = bal.pool + sum(bal.app.values())
    usable = free + paid
    plan = ws.type
    enterprise = plan == "enterprise"
    licence_left: dict[str, int] | None = None
    licences: list[dict[str, Any]] = []
    if enterprise:
        licence_left, licences = await _licence_left(store, redis, ws, now_ms)
    apps, paid_apps, inactive_apps = [], 0, 0
    for app in await store.list_apps(ws.id):
        view, source = _app_view(
            app,
            plan=plan,
            catalog=catalog,
            settings=settings,
            free=free,
            pool=bal.pool,
            app_balance=bal.app.get(app.id, 0),
            licence_left=licence_left,
            free_expired=expired and bal.free_granted > 0,
            low_threshold=ws.low_balance_threshold,
        )
        apps.append(view)
        paid_apps += source == "paid"
        inactive_apps += view["status"] == "inactive"
    session_price = unit_price(catalog, plan, "session")
    request_price = unit_price(catalog, plan, "request")
    if licence_left is not None:
        by_unit = {"session": 0, "request": 0}
        for product, n in licence_left.items():
            unit = catalog.price(plan, product).unit
            by_unit[unit] = by_unit.get(unit, 0) + n
        allowed_sessions, allowed_requests = by_unit["session"], by_unit["request"]
    else:
        left = max(0, usable)  # a paid balance below zero (a payment given back) allows none
        allowed_sessions, allowed_requests = left // session_price, left // request_price
    forecast = None if enterprise else await burn_forecast(store, ws.id, usable, now_ms)
    return {
        "workspace_id": ws.id,
        "plan": plan,
        "forecast": forecast,
        "free_credits": {
            "granted": format_amount(bal.free_granted),
            "remaining": format_amount(free),
            "expires_at": iso(bal.free_expires_ms or ws.free_expires_at),
            "lapsed": format_amount(lapsed),
        },
        "paid_balance": format_amount(paid),
        "shared_pool": format_amount(bal.pool),
        "usable_balance": format_amount(usable),
        "low_balance_threshold": format_amount(
            settings.low_balance_threshold
            if ws.low_balance_threshold is None
            else ws.low_balance_threshold
        ),
        "low_balance_threshold_is_default": ws.low_balance_threshold is None,
        "session_price": format_amount(session_price),
        "request_price": format_amount(request_price),
        "allowed_sessions": allowed_sessions,
        "allowed_requests": allowed_requests,
        "apps": apps,
        "paid_apps": paid_apps,
        "inactive_apps": inactive_apps,
        "licences": licences,
        "subscription": {
            "support_plan": "enterprise" if enterprise else "standard",
            "type": "postpaid_licence" if enterprise else "pay_as_you_go",
            "fee": "0.00",
            "renewal_due": iso(next_period_ms(now_ms)) if enterprise else None,
        },
    }
