"""The periodic projection check: Redis's copy of the store's configuration and grants,
repaired where they diverged.

An admin change writes the store first (the source of truth), then the Redis projection;
if Redis failed in between, the two disagree until someone runs ``reconcile --apply``.
This check, run every ``projection_check_interval_s`` beside the flusher, repairs what is
safe to repair under live traffic, each repair idempotent:

* a workspace's plan and licences (``project_workspace``);
* an app's live configuration (product, free-credit use, suspension, shadow, upstream)
  and its channel secrets (``project_app``);
* a credit grant recorded in the ledger whose Redis marker is missing: the grant was
  never applied, so it is now (``grant.lua`` is idempotent by the same reference).

Balances themselves are not rewritten here: with live traffic the only safe correction is
the grant that never arrived. A workspace Redis lost entirely is reported (log and
metric) for ``creditgate reconcile --apply``, which must run with traffic stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from meter.accounts import channel_secrets, projection
from meter.accounts.apps import project_app
from meter.accounts.credits import apply_topup
from meter.accounts.deps import Deps
from meter.accounts.workspaces import project_workspace
from meter.redis_layer import keys
from meter.store import App, Workspace

log = logging.getLogger(__name__)
GRANT_KINDS = ("grant_free", "topup")
APP_FIELDS = ("product", "use_free", "suspended", "shadow", "up")  # as _app_fields orders them


def _app_fields(app: App) -> list[bytes]:
    return [
        app.product.encode(),
        b"1" if app.use_free_credits else b"0",
        b"1" if app.suspended else b"0",
        b"1" if app.shadow else b"0",
        (app.upstream_url or "").encode(),
    ]


async def _workspace_drifted(d: Deps, ws: Workspace, current: dict[bytes, bytes]) -> bool:
    if current.get(b"type") != ws.type.encode():
        return True
    own = ws.low_balance_threshold
    if current.get(b"lowt") != (None if own is None else str(own).encode()):
        return True
    want = {
        f"l:{li.product}".encode(): f"{li.usage_limit},{li.per_minute},{li.per_hour}".encode()
        for li in await d.store.get_licences(ws.id)
    }
    have = {k: v for k, v in current.items() if k.startswith(b"l:")}
    return want != have


async def check_workspace(d: Deps, ws_id: str) -> Counter[str]:
    """Repair one workspace's projection; what was repaired, by kind."""
    repaired: Counter[str] = Counter()
    ws = await d.store.get_workspace(ws_id)
    if ws is None:
        return repaired
    raw = await d.redis.hgetall(keys.ws_key(ws_id))
    current = {
        (k.encode() if isinstance(k, str) else k): (v.encode() if isinstance(v, str) else v)
        for k, v in raw.items()
    }
    if b"type" not in current:
        log.error(
            "redis holds no data for workspace %s: run `creditgate reconcile --apply` "
            "(with traffic stopped) to rebuild it from the store",
            ws_id,
        )
        repaired["workspace_missing"] += 1
        return repaired
    if await _workspace_drifted(d, ws, current):
        await project_workspace(d, ws)
        repaired["workspace"] += 1
    await _repair_grants(d, ws, repaired)
    await _repair_apps(d, ws_id, repaired)
    for kind, n in repaired.items():
        log.warning("projection check: repaired %d %s projection(s) of %s", n, kind, ws_id)
    return repaired


async def _repair_grants(d: Deps, ws: Workspace, repaired: Counter[str]) -> None:
    """Apply the ledger's grants that Redis never applied (counted as ``grant``)."""
    ws_id = ws.id
    entries = [
        e for e in await d.store.ledger_entries(ws_id) if e.kind in GRANT_KINDS and e.amount > 0
    ]
    if not entries:
        return
    async with d.redis.pipeline(transaction=False) as pipe:
        for e in entries:
            pipe.exists(keys.grant_marker_key(ws_id, e.reference))
        present = await pipe.execute()
    for e, there in zip(entries, present, strict=True):
        if there:
            continue
        if e.kind == "grant_free":
            applied = await projection.grant(
                d.redis,
                ws_id,
                reference=e.reference,
                kind="free",
                amount=e.amount,
                low_threshold=d.settings.low_balance_threshold,
                free_expires_ms=ws.free_expires_at or 0,
                now_ms=d.now_ms(),
            )
            repaired["grant"] += int(applied)
        else:
            had = await d.redis.exists(keys.grant_marker_key(ws_id, e.reference))
            await apply_topup(d, e, shown_reference=e.reference)
            repaired["grant"] += int(not had)


async def _repair_apps(d: Deps, ws_id: str, repaired: Counter[str]) -> None:
    """Project again the apps whose Redis fields differ from the store (``app``)."""
    apps = await d.store.list_apps(ws_id)
    if not apps:
        return
    async with d.redis.pipeline(transaction=False) as pipe:
        for app in apps:
            pipe.hmget(keys.app_key(ws_id, app.id), list(APP_FIELDS))
        live = await pipe.execute()
    for app, fields in zip(apps, live, strict=True):
        if [f or b"" for f in fields] != _app_fields(app):
            await project_app(d, app)
            await channel_secrets.project_app_channels(d.store, d.redis, app.id)
            repaired["app"] += 1


async def run(
    d: Deps,
    stop: asyncio.Event,
    interval_s: float,
    on_repair: Callable[[str, int], None],
) -> None:
    """Check every workspace of the store every ``interval_s`` until ``stop``."""
    while not stop.is_set():
        try:
            for ws_id in await d.store.list_workspaces():
                for kind, n in (await check_workspace(d, ws_id)).items():
                    on_repair(kind, n)
        except (RedisError, OSError) as exc:
            log.warning("projection check: redis unavailable: %r", exc)
        except Exception:  # the store being down shows on /readyz
            log.exception("projection check failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
