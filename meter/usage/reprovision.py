"""Re-provisioning: a workspace's projection rebuilt in Redis from the store after Redis
lost it (``FLUSHALL``), for ``reconcile --apply`` (:mod:`meter.usage.reconcile`).

The workspace and its apps are written again, the grant idempotency markers restored
and the id counter moved past anything used before (so new event, session and claim
ids cannot collide with flushed ones); once balances are corrected, the alert flags are
set consistent with them.
"""

from __future__ import annotations

from config import Settings, load_catalog
from meter.accounts import channel_secrets, projection
from meter.accounts.rebuild import MARKED_KINDS, SEQ_FLOOR_PER_MS
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import redis_time
from meter.redis_layer.keys import F_APPS, F_POOL
from meter.store import Store


async def reprovision(store: Store, client: RedisClient, settings: Settings, ws: str) -> bool:
    """Rebuild a workspace's projection from the store if Redis lost it; ``True`` if it did."""
    w = await store.get_workspace(ws)
    if w is None:
        return False
    lost = not await client.hexists(keys.ws_key(ws), "type")
    if lost:
        licences = {
            lic.product: projection.Licence(lic.usage_limit, lic.per_minute, lic.per_hour)
            for lic in await store.get_licences(ws)
        }
        await projection.put_workspace(
            client, ws, plan=w.type, catalog=load_catalog(settings.catalog_path),
            licences=licences, low_threshold=w.low_balance_threshold, owner=w.owner_id,
        )  # fmt: skip
        if w.free_expires_at:
            await client.hset(keys.ws_key(ws), "free_exp", w.free_expires_at)
        # Past every id admissions took, by the clock they were stamped with.
        floor = int(await redis_time(client) * 1000) * SEQ_FLOOR_PER_MS
        seq = int(await client.hget(keys.ws_key(ws), "seq") or 0)
        if seq < floor:
            await client.hset(keys.ws_key(ws), "seq", floor)
        for e in await store.ledger_entries(ws):
            if e.kind in MARKED_KINDS:  # grants and payments given back
                await client.hset(keys.ws_key(ws), keys.grant_field(e.reference), 1)
                await client.set(keys.grant_marker_key(ws, e.reference), "1")
        await client.hset(keys.ws_key(ws), keys.F_MARKED, 1)
    for app in await store.list_apps(ws):
        if lost or not await client.exists(keys.app_key(ws, app.id)):
            await projection.put_app(
                client, app.id, product=app.product, use_free_credits=app.use_free_credits,
                suspended=app.suspended, upstream_url=app.upstream_url, shadow=app.shadow,
            )  # fmt: skip
        # Secrets always: an app written again without them (an earlier version's
        # re-projection) would otherwise stay unauthenticated.
        await channel_secrets.project_app_channels(store, client, app.id)
    return lost


async def restore_flags(client: RedisClient, ws: str, settings: Settings) -> None:
    """Alert flags consistent with the balances, so restoring fires no stale alert."""
    r = await client.hmget(keys.ws_key(ws), ["free", F_POOL, F_APPS, "free_exp"])
    free, pool, apps, exp = (int(v or 0) for v in r)
    usable = (free if await redis_time(client) * 1000 < exp else 0) + pool + apps
    await client.hset(
        keys.ws_key(ws),
        mapping={
            "low": int(usable < settings.low_balance_threshold),
            "pz": int(pool + apps <= 0),
            "fx": int(free == 0),
        },
    )
