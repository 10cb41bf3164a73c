"""The periodic projection check: Redis's copy of the store's configuration and grants,
repaired where they diverged.

An admin change writes the store first (the source of truth), then the Redis projection;
if Redis failed in between, the two disagree. This check, run every
``projection_check_interval_s`` beside the flusher, repairs what is safe to repair under
live traffic, each repair idempotent:

* a workspace Redis lost entirely: rebuilt from the store (:mod:`meter.accounts.rebuild`:
  balances are the ledger minus the usage the store holds), or, while Redis still holds
  usage of it the store has not got, left for the next pass (logged);
* a workspace's plan and licences (``project_workspace``);
* an app's live configuration (product, free-credit use, suspension, shadow, upstream)
  and its channel secrets (``project_app``);
* a credit grant, or a payment given back at the provider (``payment_reversed``,
  ``dispute_reinstated``: :mod:`meter.accounts.reversals`), recorded in the ledger that
  Redis never applied. Its marker is the
  field ``g:<reference>`` of the workspace hash, written with the credit by ``grant.lua``:
  in a workspace whose hash says every grant is marked (``gm``), a missing marker means
  the grant never arrived, so it is applied now (idempotent by the same reference).
  A workspace an earlier version projected kept markers as separate keys, which could be
  lost alone: there a grant with no marker at all is taken as applied, its marker
  restored and an error logged, never credited again (``reconcile --apply`` credits it
  if it was in fact never applied); the workspace is then marked.

Balances themselves are not rewritten here: with live traffic the only safe correction is
the grant that never arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping

from redis.exceptions import RedisError

from meter.accounts import channel_secrets, projection, rebuild
from meter.accounts.apps import project_app
from meter.accounts.credits import apply_topup
from meter.accounts.deps import Deps, announce
from meter.accounts.reversals import apply_reversal
from meter.accounts.workspaces import project_workspace
from meter.redis_layer import keys
from meter.redis_layer.clock import clock_ready
from meter.redis_layer.keys import F_MARKED
from meter.store import App, AppChannel, LedgerEntry, Workspace
from meter.store.models import REVERSAL_KINDS

log = logging.getLogger(__name__)
GRANT_KINDS = rebuild.GRANT_KINDS
# A grant this recent in a workspace not yet marked may be being applied right now.
LEGACY_GRACE_MS = 15 * 60 * 1000
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
    lowt = ws.low_balance_threshold
    if current.get(b"lowt") != (None if lowt is None else str(lowt).encode()):
        return True
    # The owner (``own``: whose tenant share its traffic takes); a projection written
    # before it was kept has none, and the workspace would stay a tenant of its own.
    if current.get(b"own") != (ws.owner_id.encode() if ws.owner_id else None):
        return True
    want = {
        f"l:{li.product}".encode(): f"{li.usage_limit},{li.per_minute},{li.per_hour}".encode()
        for li in await d.store.get_licences(ws.id)
    }
    have = {k: v for k, v in current.items() if k.startswith(b"l:")}
    return want != have


async def check_workspace(
    d: Deps, ws_id: str, channels: Mapping[str, list[AppChannel]] | None = None
) -> Counter[str]:
    """Repair one workspace's projection; what was repaired, by kind. ``channels``: the
    store's channel secrets by app, read once for a whole pass (else per app)."""
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
        outcome = await rebuild.rebuild_workspace(
            d.store, d.redis, d.settings, d.catalog, ws_id, now_s=d.clock()
        )
        if outcome == "rebuilt":
            await announce(d, ws_id)
        repaired["workspace_rebuilt" if outcome == "rebuilt" else "workspace_missing"] += 1
        return repaired
    if await _workspace_drifted(d, ws, current):
        await project_workspace(d, ws)
        repaired["workspace"] += 1
    await _repair_grants(d, ws, current.get(F_MARKED.encode()) == b"1", repaired)
    await _repair_apps(d, ws_id, channels, repaired)
    for kind, n in repaired.items():
        log.warning("projection check: repaired %d %s projection(s) of %s", n, kind, ws_id)
    return repaired


async def _repair_grants(d: Deps, ws: Workspace, marked: bool, repaired: Counter[str]) -> None:
    """Apply the ledger's grants Redis never applied (``grant``); in a workspace not yet
    ``marked``, restore lost markers without credit (``grant_marker``)."""
    ws_id, wk = ws.id, keys.ws_key(ws.id)
    entries = [e for e in await d.store.ledger_entries(ws_id) if rebuild.marked(e)]
    if not entries:
        if not marked:
            await d.redis.hset(wk, F_MARKED, 1)
        return
    fields = await d.redis.hmget(wk, [keys.grant_field(e.reference) for e in entries])
    async with d.redis.pipeline(transaction=False) as pipe:
        for e in entries:
            pipe.exists(keys.grant_marker_key(ws_id, e.reference))
        legacy = await pipe.execute()
    settled = True
    for e, field, old in zip(entries, fields, legacy, strict=True):
        if field is not None:
            continue
        if old:  # an earlier version's marker key: applied; moved into the hash
            await d.redis.hset(wk, keys.grant_field(e.reference), 1)
        elif marked:
            repaired["grant"] += int(await _apply(d, ws, e))
        elif d.now_ms() - e.created_at < LEGACY_GRACE_MS:
            settled = False  # perhaps being applied right now: decided on a later pass
        else:
            await d.redis.hsetnx(wk, keys.grant_field(e.reference), 1)
            await d.redis.set(keys.grant_marker_key(ws_id, e.reference), 1, nx=True)
            log.error(
                "grant %s of workspace %s (%d micro-dollars) is recorded in the ledger but "
                "has no marker in redis while the workspace's balances are there: the marker "
                "was lost, or the grant never applied. Taken as applied (marker restored, "
                "nothing credited); `creditgate reconcile` shows a MISMATCH if it was never "
                "applied, and `reconcile --apply` credits it",
                e.reference, ws_id, e.amount,
            )  # fmt: skip
            repaired["grant_marker"] += 1
    if not marked and settled:
        await d.redis.hset(wk, F_MARKED, 1)


async def _apply(d: Deps, ws: Workspace, e: LedgerEntry) -> bool:
    if e.kind in REVERSAL_KINDS:
        return await apply_reversal(d, e)
    if e.kind == "grant_free":
        return await projection.grant(
            d.redis,
            ws.id,
            reference=e.reference,
            kind="free",
            amount=e.amount,
            low_threshold=d.settings.low_balance_threshold,
            free_expires_ms=ws.free_expires_at or 0,
            now_ms=d.now_ms(),
        )
    marker = keys.grant_field(e.reference)
    had = await d.redis.hexists(keys.ws_key(ws.id), marker)
    await apply_topup(d, e, shown_reference=e.reference)
    return not had and bool(await d.redis.hexists(keys.ws_key(ws.id), marker))


async def _repair_apps(
    d: Deps,
    ws_id: str,
    by_app: Mapping[str, list[AppChannel]] | None,
    repaired: Counter[str],
) -> None:
    """Project again the apps whose Redis fields or channel secrets differ from the
    store's (``app``)."""
    apps = await d.store.list_apps(ws_id)
    for app in apps:
        channels = (
            by_app.get(app.id, [])
            if by_app is not None
            else await d.store.list_app_channels(app.id)
        )
        names = [channel_secrets.field_of(ch.channel) for ch in channels]
        live = await d.redis.hmget(keys.app_key(ws_id, app.id), [*APP_FIELDS, *names])
        want = _app_fields(app) + [channel_secrets.projected(ch) for ch in channels]
        if [f or b"" for f in live] != want and await project_app(d, app):
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
            if not await clock_ready(d.clock, d.redis, d.settings.redis_timeout_s):
                raise RedisError("metering clock not synced to redis TIME yet")
            by_app: dict[str, list[AppChannel]] = {}
            for ch in await d.store.list_app_channels():
                by_app.setdefault(ch.app_id, []).append(ch)
            for ws_id in await d.store.list_workspaces():
                for kind, n in (await check_workspace(d, ws_id, by_app)).items():
                    on_repair(kind, n)
        except (RedisError, OSError) as exc:
            log.warning("projection check: redis unavailable: %r", exc)
        except Exception:  # the store being down shows on /readyz
            log.exception("projection check failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
