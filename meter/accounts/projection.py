"""The live projection in Redis of what the store holds: workspaces, apps, balances.

The durable store is the source of truth; these functions write the fields that
``admit.lua`` reads. Live balances change only through ``grant.lua`` (credit in),
``admit.lua`` (debit), ``refund.lua`` (reversal) and ``reverse.lua`` (a payment
given back at the provider), so rebuilding them is explicit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.typing import EncodableT, FieldT

from config import Catalog
from config.catalog import PRODUCTS
from meter.errors import InvalidInput, NotFound
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.keys import F_APP, F_POOL
from meter.redis_layer.scripts import register
from meter.store import App, AppChannel

FIELD_PREFIX = "ch:"  # an app hash's channel secrets: meter/accounts/channel_secrets.py


@dataclass(frozen=True, slots=True)
class Licence:
    """An enterprise licence of one product: usage limit per period and rate limits."""

    usage_limit: int
    per_minute: int
    per_hour: int


@dataclass(frozen=True, slots=True)
class Balances:
    """Live balances of a workspace (micro-dollars)."""

    plan: str
    free: int
    free_granted: int
    free_expires_ms: int
    lapsed: int
    pool: int
    app: dict[str, int]


def _s(v: bytes | str | None) -> str:
    return v.decode() if isinstance(v, bytes) else (v or "")


def workspace_fields(
    plan: str, catalog: Catalog, licences: Mapping[str, Licence], owner: str | None = None
) -> dict[FieldT, EncodableT]:
    """The configuration fields of a workspace hash: plan, prices, licences, and the
    owner (``own``: whose share of a worker's connections its traffic takes)."""
    fields: dict[FieldT, EncodableT] = {"type": plan}
    if owner:
        fields["own"] = owner
    for product in PRODUCTS:
        price = catalog.price(plan, product)
        fields[f"u:{product}"] = price.unit
        fields[f"p:{product}"] = price.price
    fields["np"] = catalog.price(plan, "notification").price
    for product, li in licences.items():
        if product not in PRODUCTS:
            raise InvalidInput(f"licences.{product}", "unknown product")
        fields[f"l:{product}"] = f"{li.usage_limit},{li.per_minute},{li.per_hour}"
    return fields


def field_of(channel: str) -> str:
    """The app-hash field holding a channel's projected secret (``ch:<channel>``)."""
    return FIELD_PREFIX + channel


def projected(ch: AppChannel) -> bytes:
    """The Redis value of a channel's secret: still encrypted."""
    doc: dict[str, Any] = {"scheme": ch.scheme, "secret": ch.secret_enc}
    if ch.notify_secret_enc:
        doc["notify"] = ch.notify_secret_enc
    return orjson.dumps(doc)


def app_fields(app: App) -> dict[str, str | int]:
    """The configuration fields of an app hash as the store holds them."""
    return {
        "product": app.product,
        "use_free": int(app.use_free_credits),
        "suspended": int(app.suspended),
        "shadow": int(app.shadow),
        "up": app.upstream_url or "",
    }


async def put_workspace(
    client: RedisClient,
    ws: str,
    *,
    plan: Literal["standard", "enterprise"],
    catalog: Catalog,
    licences: Mapping[str, Licence] | None = None,
    low_threshold: int | None = None,
    owner: str | None = None,
) -> None:
    """Write a workspace's plan, prices, licences, owner (``None``: left as it is) and the
    owner's low-balance threshold (``None``: the settings' default; balances are left
    alone)."""
    if not keys.ID_RE.fullmatch(ws):
        raise InvalidInput("workspace_id", "must be 4-32 lowercase letters or digits")
    lic = licences or {}
    fields = workspace_fields(plan, catalog, lic, owner)
    wk = keys.ws_key(ws)
    created = not await client.hexists(wk, "type")
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(wk, mapping=fields)
        if created:  # every claim of a new workspace is recorded (meter/usage/claims.py)
            pipe.zadd(keys.claim_records_key(ws), {"~": 0}, nx=True)
        stale = [f"l:{p}" for p in PRODUCTS if p not in lic]
        if low_threshold is None:
            stale.append("lowt")
        else:
            pipe.hset(wk, "lowt", low_threshold)
        if stale:
            pipe.hdel(wk, *stale)
        await pipe.execute()
    await client.sadd(keys.WORKSPACES, ws)


async def put_app(
    client: RedisClient,
    app_id: str,
    *,
    product: str,
    use_free_credits: bool = True,
    suspended: bool = False,
    upstream_url: str | None = None,
    per_minute: int | None = None,
    per_hour: int | None = None,
    shadow: bool = False,
) -> None:
    """Write an app's configuration; bumps its version so caches see the change.
    ``shadow``: metered and recorded, never refused (see admit.lua)."""
    ws = keys.workspace_of(app_id)
    if ws is None:
        raise InvalidInput("app_id", "malformed app id")
    if product not in PRODUCTS:
        raise InvalidInput("product", f"must be one of {', '.join(PRODUCTS)}")
    if not await client.exists(keys.ws_key(ws)):
        raise NotFound("workspace", ws)
    ak = keys.app_key(ws, app_id)
    fields: dict[FieldT, EncodableT] = {
        "product": product,
        "use_free": int(use_free_credits),
        "suspended": int(suspended),
        "shadow": int(shadow),
        "up": upstream_url or "",
    }
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(ak, mapping=fields)
        for name, value in (("pm", per_minute), ("ph", per_hour)):
            if value is None:
                pipe.hdel(ak, name)
            else:
                pipe.hset(ak, name, value)
        pipe.hincrby(ak, "v", 1)
        pipe.sadd(keys.apps_key(ws), app_id)
        await pipe.execute()


async def grant(
    client: RedisClient,
    ws: str,
    *,
    reference: str,
    kind: Literal["free", "funds"],
    amount: int,
    low_threshold: int,
    app_id: str = "",
    free_expires_ms: int = 0,
    now_ms: int | None = None,
) -> bool:
    """Add credit, idempotent by ``reference``; returns False if it was already applied.

    ``now_ms`` (default: the wall clock) lets a new free grant first lapse free credits
    already past their validity, so they cannot become spendable again.
    """
    if amount <= 0:
        raise InvalidInput("amount", "must be positive")
    if not reference or len(reference) > 128:
        raise InvalidInput("reference", "must be 1-128 characters")
    res = await register(client, "grant")(
        keys=keys.ws_keys(ws),
        args=[
            reference,
            kind,
            amount,
            app_id,
            free_expires_ms,
            low_threshold,
            int(time.time() * 1000) if now_ms is None else now_ms,
        ],
    )
    if res == -1:
        raise NotFound("workspace", ws)
    if res == -2:
        raise NotFound("app", app_id)
    return bool(res == 1)


async def reverse(
    client: RedisClient,
    ws: str,
    *,
    reference: str,
    amount: int,
    app_id: str = "",
    now_ms: int | None = None,
) -> bool:
    """Take paid funds back (``reverse.lua``), idempotent by ``reference``; returns False
    if it was already applied. The balance may go below zero; with ``now_ms``, taking the
    paid total from above zero to zero or below announces ``paid_balance.zero``."""
    if amount <= 0:
        raise InvalidInput("amount", "must be positive")
    if not reference or len(reference) > 128:
        raise InvalidInput("reference", "must be 1-128 characters")
    res = await register(client, "reverse")(
        keys=keys.ws_keys(ws),
        args=[reference, amount, app_id, *([] if now_ms is None else [now_ms])],
    )
    if res == -1:
        raise NotFound("workspace", ws)
    if res == -2:
        raise NotFound("app", app_id)
    return bool(res == 1)


async def read_balances(client: RedisClient, ws: str) -> Balances:
    """Live balances of a workspace and of each of its apps."""
    raw = await client.hmget(
        keys.ws_key(ws), ["type", "free", "free_granted", "free_exp", "lapsed", F_POOL]
    )
    if raw[0] is None:
        raise NotFound("workspace", ws)
    app_ids = sorted(_s(a) for a in await client.smembers(keys.apps_key(ws)))
    app: dict[str, int] = {}
    for app_id in app_ids:
        app[app_id] = int(await client.hget(keys.app_key(ws, app_id), F_APP) or 0)
    return Balances(
        plan=_s(raw[0]),
        free=int(raw[1] or 0),
        free_granted=int(raw[2] or 0),
        free_expires_ms=int(raw[3] or 0),
        lapsed=int(raw[4] or 0),
        pool=int(raw[5] or 0),
        app=app,
    )


async def rename_legacy_fields(client: RedisClient) -> int:
    """Balance fields still under their pre-0.2 names (``paid``, ``apaid``) renamed in
    place for every workspace Redis knows (``rename_fields.lua``); how many were renamed.
    Run at start-up, before any admission of this version reads them."""
    script = register(client, "rename_fields")
    renamed = 0
    for ws in sorted(_s(w) for w in await client.smembers(keys.WORKSPACES)):
        renamed += int(await script(keys=keys.ws_keys(ws)))
    return renamed
