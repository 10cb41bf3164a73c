"""Reconcile: live balances in Redis against what the durable store says they must be.

For each workspace the store gives ``ledger - flushed usage`` per pool: free credits,
the shared paid pool, and the funds tied to each app (plus the granted and lapsed free
totals). Usage and events Redis has not flushed yet, and quarantined batches, explain
part of any gap (:mod:`meter.usage.pending`), so each field is reported with the raw
store value, those parts and the value Redis should hold. Every field where Redis
differs from the store is listed (:mod:`meter.usage.reconcile_report`).
The unflushed usage and the store are read as of one moment
(:mod:`meter.usage.unflushed`), so a flusher committing meanwhile moves no unit into
both reads or out of both: running flushers are safe.

``apply`` writes what Redis should hold. After Redis lost its data (``FLUSHALL``) it
first re-provisions the workspace and its apps from the store
(:mod:`meter.usage.reprovision`). Usage that was never flushed is gone with the data: it
shows as a difference and is not charged. Run ``apply`` with
traffic stopped; balances are corrected by increments, not overwritten, and only when a
second comparison finds the same and the balances still hold what it read (admissions
moving balances meanwhile stop it). The correction (``correct.lua``) also marks every
grant and payment given back that the ledger holds as applied (``g:<reference>``), so
neither the projection check nor a redelivered provider event applies one again.

Live flush buckets outside their index (:mod:`meter.usage.stranded`) are listed too:
no flusher takes them, and their usage counts in no unflushed total. ``apply`` puts them
back in their index before comparing, so that usage is flushed and billed, not given
back as a difference.
"""

from __future__ import annotations

import orjson

from config import Settings
from meter.accounts.rebuild import marked, store_values
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import redis_time
from meter.redis_layer.keys import F_APP
from meter.redis_layer.scripts import register
from meter.store import Store
from meter.usage import stranded
from meter.usage.pending import account
from meter.usage.reconcile_report import Difference, Report
from meter.usage.reprovision import reprovision, restore_flags
from meter.usage.unflushed import read_pending

__all__ = ["compare", "reconcile", "store_values"]


async def redis_values(client: RedisClient, ws: str, names: list[str]) -> dict[str, int | None]:
    """The same fields as held by Redis (``None`` where missing)."""
    wk = keys.ws_key(ws)
    out: dict[str, int | None] = {}
    period = billing_period(await redis_time(client))
    for name in names:
        if name.startswith("app:"):
            raw = await client.hget(keys.app_key(ws, name[4:]), F_APP)
            exists = await client.exists(keys.app_key(ws, name[4:]))
        elif name.startswith("lu:"):
            raw = await client.get(keys.usage_limit_key(ws, name[3:], period))
            exists = 1
        else:
            raw = await client.hget(wk, name)
            exists = await client.exists(wk)
        out[name] = int(raw) if raw is not None else (0 if exists else None)
    return out


async def compare(store: Store, client: RedisClient, ws: str) -> Report:
    """The differences of one workspace, what Redis has not flushed (usage, events), its
    dead letters and the store read as of one moment
    (:func:`meter.usage.unflushed.read_pending`), then Redis' balances, as of Redis's
    clock (the one admissions are stamped with: expiry, billing period)."""
    now = await redis_time(client)

    async def read() -> tuple[list[str], set[str], dict[str, int]]:
        entries = await store.ledger_entries(ws)
        values = await store_values(store, ws, now, entries)
        return [e.reference for e in entries if marked(e)], {e.reference for e in entries}, values

    (marks, refs, stored), pending = await read_pending(store, client, ws, 0, 2**52, read)
    acc = account(ws, pending, refs, billing_period(now))
    names = sorted(stored)
    actual = await redis_values(client, ws, names)
    report = Report(ws, marks=marks, quarantined=acc.dead, unreadable=acc.unreadable)
    for name in names:
        d = Difference(
            ws, name, actual[name], stored[name], acc.unflushed.get(name, 0),
            acc.quarantined.get(name, 0),
        )  # fmt: skip
        if actual[name] != d.store or not d.explained:
            report.differences.append(d)
    return report


async def reconcile_workspace(
    store: Store,
    client: RedisClient,
    settings: Settings,
    ws: str,
    *,
    apply: bool = False,
    strays: dict[str, list[int]] | None = None,
) -> Report:
    """Compare (and with ``apply`` correct) one workspace.

    Corrections are made only when two comparisons in a row (after any re-provisioning)
    find the same mismatches with the same Redis values (then the report holds the second
    one's differences, ``corrected`` the balances written): a balance that moved between
    them leaves Redis untouched, ``applied`` false, ``unsettled`` true. ``strays``: its
    buckets outside their index (:func:`meter.usage.stranded.find`), indexed with ``apply``.
    """
    strays = strays or {}
    if apply:
        strays = {
            kind: indexed
            for kind, buckets in strays.items()
            if (indexed := await stranded.check(client, ws, kind, buckets, index=True))
        }
    report = await compare(store, client, ws)
    report.stranded = strays
    if apply:
        report.reprovisioned = await reprovision(store, client, settings, ws)
        # Both after re-provisioning (it may write a workspace or an app again).
        basis, again = await compare(store, client, ws), await compare(store, client, ws)
        if again.held:  # what Redis took is unknown: never corrected by a guess
            report.quarantined, report.unreadable = again.quarantined, again.unreadable
            return report
        if _facts(again) != _facts(basis):
            report.unsettled = True
            return report
        if (written := await _correct(client, ws, again)) is None:
            report.unsettled = True
            return report
        if report.reprovisioned:
            await restore_flags(client, ws, settings)
        report.applied, report.corrected, report.differences = True, written, again.differences
    return report


def _facts(report: Report) -> list[tuple[str, int | None, int]]:
    return [(d.field, d.redis, d.expected) for d in report.mismatches]


async def _correct(client: RedisClient, ws: str, report: Report) -> int | None:
    """Move the balances of ``report`` to what the store says and mark its ledger entries
    applied, in one script (``correct.lua``): how many balances it wrote; ``None``
    (nothing written) if a balance moved since it was read. The markers keep the projection
    check, or a redelivered refund, from applying an entry the correction holds twice."""
    period = billing_period(await redis_time(client))
    fix: list[list[str]] = []
    for d in report.mismatches:
        delta = d.expected - (d.redis or 0)
        if not delta:
            continue
        seen = "" if d.redis is None else str(d.redis)
        if d.field.startswith("app:"):
            fix.append([f":a:{d.field[4:]}", F_APP, seen, str(delta)])
        elif d.field.startswith("lu:"):
            fix.append([f":lu:{d.field[3:]}:{period}", "", seen, str(delta)])
        else:
            fix.append([":ws", d.field, seen, str(delta)])
    doc = orjson.dumps({"fix": fix, "grants": report.marks})
    done = await register(client, "correct")(keys=keys.ws_keys(ws), args=[doc])
    return len(fix) if done else None


async def reconcile(
    store: Store,
    client: RedisClient,
    settings: Settings,
    *,
    workspace: str | None = None,
    apply: bool = False,
) -> list[Report]:
    """Reports for one workspace or every workspace of the store."""
    spaces = [workspace] if workspace else await store.list_workspaces()
    strays = await stranded.find(client, workspace)
    return [
        await reconcile_workspace(store, client, settings, ws, apply=apply, strays=strays.get(ws))
        for ws in spaces
    ]
