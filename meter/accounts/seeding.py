"""A workspace seeded straight into Redis (its projection), without the store: the demo
when no store is reachable, and the tests of the metering core and the gateway."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

from config import Settings, load_catalog
from meter.accounts import projection
from meter.redis_layer.client import RedisClient


async def seed(
    client: RedisClient,
    settings: Settings,
    ws: str,
    apps: Mapping[str, Mapping[str, Any]],
    *,
    plan: Literal["standard", "enterprise"] = "standard",
    free: int = 0,
    free_expires_ms: int | None = None,
    pool: int = 0,
    licences: Mapping[str, projection.Licence] | None = None,
    now: float | None = None,
    owner: str | None = None,
) -> None:
    """Workspace ``ws`` with ``apps`` (app id -> :func:`projection.put_app` keywords, plus
    ``funds``: micro-dollars tied to that app), ``free`` free credits valid for the
    settings' validity from ``now`` (default: the wall clock) unless ``free_expires_ms``
    says otherwise, ``pool`` funds of the workspace and its ``owner`` (a user id).
    Amounts in micro-dollars; each grant is idempotent by its reference (``funds-<app>``,
    ``free``, ``pool``)."""
    low = settings.low_balance_threshold
    await projection.put_workspace(
        client,
        ws,
        plan=plan,
        catalog=load_catalog(settings.catalog_path),
        licences=licences,
        owner=owner,
    )
    for app_id, kw in apps.items():
        options = dict(kw)
        funds = options.pop("funds", 0)
        await projection.put_app(client, app_id, **options)
        if funds:
            await projection.grant(
                client, ws, reference=f"funds-{app_id}", kind="funds", amount=funds,
                app_id=app_id, low_threshold=low,
            )  # fmt: skip
    if free:
        now = time.time() if now is None else now
        expires = free_expires_ms or int((now + settings.free_credit_validity_s) * 1000)
        await projection.grant(
            client, ws, reference="free", kind="free", amount=free, free_expires_ms=expires,
            low_threshold=low,
        )  # fmt: skip
    if pool:
        await projection.grant(
            client, ws, reference="pool", kind="funds", amount=pool, low_threshold=low
        )
