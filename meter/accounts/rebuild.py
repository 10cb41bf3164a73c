"""A workspace Redis lost, rebuilt from the store: balances are the ledger minus the
usage the store holds, never the grants alone.

Every path that finds a workspace missing from Redis comes here: an owner's or operator's
change (``project_workspace``), the periodic projection check, and creating a workspace
(its first projection is a rebuild of a store holding only its free grant). The rebuild
is one script (``rebuild.lua``): it writes nothing if the workspace is there, and refuses
while Redis still holds usage or events of the workspace that the store has not got yet
(the flusher moves them there; then the next attempt is exact). Usage admitted but never
flushed before Redis lost it is gone with it and is not charged.

Per pool the store records what usage took (``amount_free``, ``amount_pool``,
``amount_app`` of each bucket, split by ``admit.lua``'s deduction order when charged), so
each balance is rebuilt as exactly what the ledger credited to it minus what was taken
from it.
"""

from __future__ import annotations

import calendar
import logging
import time
from typing import Any, Literal

import orjson

from config import Catalog, Settings
from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.redis_layer.keys import F_APP, F_APPS, F_MARKED, F_POOL
from meter.redis_layer.scripts import register
from meter.store import App, LedgerEntry, Store, Workspace
from meter.store.models import REVERSAL_KINDS

log = logging.getLogger(__name__)
GRANT_KINDS = ("grant_free", "topup")
# Every kind whose live balance change carries a ``g:<reference>`` marker: grants
# (grant.lua) and payments given back (reverse.lua, or grant.lua for a dispute won).
MARKED_KINDS = GRANT_KINDS + REVERSAL_KINDS


def marked(e: LedgerEntry) -> bool:
    """Whether ``e`` changed a live balance under its own marker (a reversal that moved
    nothing, a dispute's state only, has none)."""
    return (e.kind in GRANT_KINDS and e.amount > 0) or (e.kind in REVERSAL_KINDS and e.amount != 0)


# After a data loss the id counter restarts here: ms since the epoch x 1000 stays above
# any count a workspace could reach, and below 2^53 (Lua numbers) for centuries.
SEQ_FLOOR_PER_MS = 1000
# Store reads a rebuild makes while flushes keep landing, before it gives up for now.
READS = 3
Outcome = Literal["present", "rebuilt", "refused", "unknown"]


async def store_values(
    store: Store, ws: str, now_s: float, entries: list[LedgerEntry] | None = None
) -> dict[str, int]:
    """What the store says each balance field must be: ``free``, ``pool``, ``apps``,
    ``app:<id>``, ``free_granted``, ``lapsed`` and (enterprise) ``lu:<product>`` (usage
    counted this month), before any usage Redis has not flushed yet. ``entries``: the
    workspace's ledger as already read (the grants marked applied must be those summed)."""
    if entries is None:
        entries = await store.ledger_entries(ws)
    free = shared = 0
    credited: dict[str, int] = {}
    for e in entries:
        if e.resolved_pool == "free":
            free += e.amount
        elif e.app_id is None:
            shared += e.amount
        else:
            credited[e.app_id] = credited.get(e.app_id, 0) + e.amount
    spent = await store.usage_spent(ws)
    apps = {a.id for a in await store.list_apps(ws)} | set(credited) | set(spent.apps)
    out = {
        "free": free - spent.free,
        F_POOL: shared - spent.shared,
        "free_granted": sum(e.amount for e in entries if e.kind == "grant_free"),
        "lapsed": -sum(e.amount for e in entries if e.kind == "lapse"),
    }
    apps_total = 0
    for app in sorted(apps):
        v = credited.get(app, 0) - spent.apps.get(app, 0)
        out[f"app:{app}"] = v
        apps_total += v
    out[F_APPS] = apps_total
    w = await store.get_workspace(ws)
    if w is not None and w.type == "enterprise":
        # Invoiced units per flush bucket: a bucket's prepaid units (before an upgrade in
        # the same month) are not licensed usage. A bucket that straddles the upgrade
        # counts whole.
        used = {lic.product: 0 for lic in await store.get_licences(ws)}
        async for row in store.iter_usage(ws, _month_start_ms(now_s), int(now_s * 1000) + 1):
            if row.product in used and row.amount_invoiced:
                used[row.product] += row.units
        out.update({f"lu:{product}": n for product, n in used.items()})
    return out


def _lapsed(ws: str, free_set: str, entries: list[LedgerEntry]) -> bool:
    """Whether the ledger lapsed the free credits ``<free_exp>:<free_granted>`` (a lapse
    referenced ``<ws>:expiry:<set>``, or ``<ws>:expiry:<set>:<n>``: admit.lua's keys)."""
    first = f"{ws}:expiry:{free_set}"
    return any(
        e.kind == "lapse" and (e.reference == first or e.reference.startswith(first + ":"))
        for e in entries
    )


def _month_start_ms(now_s: float) -> int:
    t = time.gmtime(now_s)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000


async def rebuild_workspace(
    store: Store,
    client: RedisClient,
    settings: Settings,
    catalog: Catalog,
    ws_id: str,
    *,
    now_s: float | None = None,
    new: bool = False,
) -> Outcome:
    """Rebuild ``ws_id`` in Redis from the store if Redis lost it.

    ``present``: Redis holds it (nothing written); ``rebuilt``; ``refused``: Redis still
    holds usage of it not in the store (logged; retried by the next check, or
    ``creditgate reconcile --apply``); ``unknown``: the store has no such workspace.
    ``new``: its first projection (a rebuild too, logged quietly).
    """
    script = register(client, "rebuild")
    for _ in range(READS):
        # The acks counted before the store is read: a flush acked after is refused (-2).
        asked = await script(keys=keys.ws_keys(ws_id), args=["", ""])
        if not isinstance(asked, list):
            return "present" if int(asked) == 0 else _refused(ws_id)
        ws = await store.get_workspace(ws_id)
        if ws is None:
            return "unknown"
        now = time.time() if now_s is None else now_s
        doc, values = await _read(store, settings, catalog, ws, now, new)
        res = int(await script(keys=keys.ws_keys(ws_id), args=[orjson.dumps(doc), asked[0]]))
        if res != -2:
            break
    else:
        return _refused(ws_id)
    if res == 0:
        return "present"
    if res < 0:
        return _refused(ws_id)
    await client.sadd(keys.WORKSPACES, ws_id)
    log.log(
        logging.DEBUG if new else logging.WARNING,
        "rebuilt workspace %s in redis from the store: free=%d pool=%d apps=%d "
        "(ledger minus the usage the store holds)",
        ws_id, values["free"], values[F_POOL], values[F_APPS],
    )  # fmt: skip
    return "rebuilt"


def _refused(ws_id: str) -> Outcome:
    log.error(
        "redis lost workspace %s but still holds usage of it not yet in the store: not "
        "rebuilt now (the flusher moves that usage to the store, then the next projection "
        "check rebuilds it; or run `creditgate reconcile --apply` with traffic stopped)",
        ws_id,
    )
    return "refused"


async def _read(
    store: Store,
    settings: Settings,
    catalog: Catalog,
    ws: Workspace,
    now: float,
    new: bool,
) -> tuple[dict[str, Any], dict[str, int]]:
    """What rebuild.lua writes, as the store holds it now; and the balances in it."""
    ws_id = ws.id
    entries = await store.ledger_entries(ws_id)
    values = await store_values(store, ws_id, now, entries)
    fields = await _workspace_fields(store, settings, catalog, ws, values, now, new)
    free_set = f"{fields['free_exp']}:{fields['free_granted']}"
    if _lapsed(ws_id, free_set, entries):  # refund.lua gives such credits back as lapsed
        fields["free_lapsed"] = free_set
    doc = {
        "ws": fields,
        "apps": [
            {"id": app.id, "fields": await _app_fields(store, app, values)}
            for app in await store.list_apps(ws_id)
        ],
        "grants": [e.reference for e in entries if marked(e)],
        "lu": [
            [f"{k[3:]}:{billing_period(now)}", str(v)] for k, v in values.items() if k[:3] == "lu:"
        ],
    }
    return doc, values


async def _workspace_fields(
    store: Store,
    settings: Settings,
    catalog: Catalog,
    ws: Workspace,
    values: dict[str, int],
    now_s: float,
    new: bool,
) -> dict[str, str]:
    lic = {
        li.product: projection.Licence(li.usage_limit, li.per_minute, li.per_hour)
        for li in await store.get_licences(ws.id)
    }
    given = projection.workspace_fields(ws.type, catalog, lic, ws.owner_id)
    fields = {str(k): str(v) for k, v in given.items()}
    exp = ws.free_expires_at or 0
    free, pool, apps = values["free"], values[F_POOL], values[F_APPS]
    low = settings.low_balance_threshold
    if ws.low_balance_threshold is not None:
        low = ws.low_balance_threshold
        fields["lowt"] = str(low)
    usable = (free if now_s * 1000 < exp else 0) + pool + apps
    fields.update(
        free=str(free),
        free_granted=str(values["free_granted"]),
        lapsed=str(values["lapsed"]),
        free_exp=str(exp),
        low=str(int(usable < low)),
    )
    if not new:  # ids (events, claims) used before the loss must not come again
        fields["seq"] = str(int(now_s * 1000) * SEQ_FLOOR_PER_MS)
    fields[F_POOL] = str(pool)
    fields[F_APPS] = str(apps)
    fields[F_MARKED] = "1"
    return fields


async def _app_fields(store: Store, app: App, values: dict[str, int]) -> dict[str, str]:
    fields = {k: str(v) for k, v in projection.app_fields(app).items()}
    fields[F_APP] = str(values.get(f"app:{app.id}", 0))
    for ch in await store.list_app_channels(app.id):
        fields[projection.field_of(ch.channel)] = projection.projected(ch).decode()
    return fields
