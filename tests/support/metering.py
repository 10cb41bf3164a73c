"""Test helpers for the metering core: a manual clock and workspace seeding on real Redis."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass, field

from config import Settings, load_catalog
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock

_ids = itertools.count(1)


def new_ws_id() -> str:
    """A unique workspace id, so tests can share a Redis (or a cluster) without flushing."""
    return "w" + uuid.uuid4().hex[:12]


@dataclass
class Workspace:
    ws: str
    apps: list[str] = field(default_factory=list)


async def seed(
    client: RedisClient,
    cfg: Settings,
    clock: Clock,
    *,
    free: int = 0,
    pool: int = 0,
    products: tuple[str, ...] = ("automation",),
    plan: str = "standard",
    licences: dict[str, projection.Licence] | None = None,
    use_free: bool = True,
) -> Workspace:
    """A workspace with one app per product, ``free`` free credits and ``pool`` paid funds."""
    ws = new_ws_id()
    await projection.put_workspace(
        client,
        ws,
        plan=plan,
        catalog=load_catalog(),
        licences=licences,  # type: ignore[arg-type]
    )
    out = Workspace(ws)
    for product in products:
        app = f"{ws}_app{next(_ids):04d}"
        await projection.put_app(client, app, product=product, use_free_credits=use_free)
        out.apps.append(app)
    if free:
        expires = int((clock.now + cfg.free_credit_validity_s) * 1000)
        await projection.grant(
            client,
            ws,
            reference="free",
            kind="free",
            amount=free,
            low_threshold=cfg.low_balance_threshold,
            free_expires_ms=expires,
        )
    if pool:
        await projection.grant(
            client,
            ws,
            reference="pool",
            kind="funds",
            amount=pool,
            low_threshold=cfg.low_balance_threshold,
        )
    return out


async def agg_totals(client: RedisClient, ws: str) -> Counter[str]:
    """Sum every aggregate metric of a workspace over all its live buckets."""
    totals: Counter[str] = Counter()
    members = await client.zrange(keys.agg_index_key(ws), 0, -1)
    for m in members:
        fields = await client.hgetall(keys.agg_key(ws, int(m)))
        for f, v in fields.items():
            metric = keys.agg_field_parts(f)[4]
            totals[metric] += int(v)
    return totals


async def events(client: RedisClient, ws: str) -> list[str]:
    import orjson

    return [orjson.loads(e)["type"] for e in await client.lrange(keys.events_key(ws), 0, -1)]


def admitter(client: RedisClient, cfg: Settings, clock: Clock) -> Admitter:
    return Admitter(client, cfg, clock=clock)
