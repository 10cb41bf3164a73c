"""Test helpers for the metering core: new workspaces seeded on real Redis, their totals."""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from config import Settings
from meter.accounts import projection, seeding
from meter.admission.admitter import Admitter
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.settings import make_settings

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
    plan: Literal["standard", "enterprise"] = "standard",
    licences: dict[str, projection.Licence] | None = None,
    use_free: bool = True,
) -> Workspace:
    """A new workspace with one app per product, ``free`` free credits (valid from the
    clock's now) and ``pool`` paid funds, seeded by :func:`meter.accounts.seeding.seed`."""
    out = Workspace(new_ws_id())
    out.apps = [f"{out.ws}_app{next(_ids):04d}" for _ in products]
    apps = {
        app: {"product": product, "use_free_credits": use_free}
        for app, product in zip(out.apps, products, strict=True)
    }
    await seeding.seed(
        client, cfg, out.ws, apps, plan=plan, free=free, pool=pool, licences=licences,
        now=clock.now,
    )  # fmt: skip
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


_made: list[Admitter] = []


def admitter(
    client: RedisClient, cfg: Settings, clock: Callable[[], float] = time.time
) -> Admitter:
    """An Admitter closed at the end of the test (it owns a connection: its pipe)."""
    adm = Admitter(client, cfg, clock=clock)
    _made.append(adm)
    return adm


@pytest.fixture(autouse=True)
async def _close_admitters() -> AsyncIterator[None]:
    yield
    while _made:
        await _made.pop().close()


async def admission(
    client: RedisClient, *, free: int = 0, pool: int = 0, **settings: Any
) -> tuple[Clock, Settings, Workspace, Admitter]:
    """A test clock, ``make_settings(**settings)``, a new workspace with ``free`` and
    ``pool`` credit (:func:`seed`) and an admitter on them."""
    clock, cfg = Clock(), make_settings(**settings)
    w = await seed(client, cfg, clock, free=free, pool=pool)
    return clock, cfg, w, admitter(client, cfg, clock)
