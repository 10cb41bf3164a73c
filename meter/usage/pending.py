"""What reconcile adds to the store's values: everything Redis already counted that the
store's view (:func:`meter.usage.unflushed.read_pending`) lacks, as signed changes per
reconciled field (``free``, ``pool``, ``apps``, ``app:<id>``, ``free_granted``,
``lapsed``, ``lu:<product>``).

* Unflushed usage: live and claimed aggregate buckets (balances go down).
* Unflushed events: an event the flusher has not written yet may move a balance in the
  store when it does. Today one kind does: ``free_credits.expired`` (admit.lua,
  grant.lua, refund_free.lua lapse the credits in Redis first; the flusher then writes
  its ``lapse`` ledger entry). Each event is turned into the ledger entries the flusher
  would write (:func:`meter.usage.batches.event_rows`, so any event kind that writes one
  counts), and an entry whose reference the view's ledger holds already (an event a
  Redis that lost data made again under its ``once`` key) is the store's, not counted.
  An event this version cannot read is listed in ``unreadable``: what it took is
  unknown, and reconcile corrects nothing in its workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.keys import F_APPS, F_POOL
from meter.store import LedgerEntry
from meter.usage.batches import event_rows
from meter.usage.unflushed import Pending, Rows

Changes = dict[str, int]


@dataclass(slots=True)
class Accounted:
    """``unflushed`` changes per field; ``unreadable``: events of the events list this
    version cannot read."""

    unflushed: Changes = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def _add(out: Changes, name: str, v: int) -> None:
    if v:
        out[name] = out.get(name, 0) + v


def usage_changes(rows: Rows, period: str, out: Changes | None = None) -> Changes:
    """Aggregates as signed changes per reconciled field."""
    out = {} if out is None else out
    for bucket, folded in rows:
        in_period = billing_period(bucket) == period
        for (app, _ch, product, _unit), c in folded.items():
            _add(out, "free", -int(c.get("amount_free", 0)))
            _add(out, F_POOL, -int(c.get("amount_pool", 0)))
            a = int(c.get("amount_app", 0))
            _add(out, f"app:{app}", -a)
            _add(out, F_APPS, -a)
            if in_period and int(c.get("amount_invoiced", 0)):
                _add(out, f"lu:{product}", int(c.get("units", 0)))
    return out


def ledger_changes(entries: list[LedgerEntry], out: Changes) -> None:
    """Ledger entries as :func:`meter.accounts.rebuild.store_values` counts them."""
    for e in entries:
        if e.resolved_pool == "free":
            _add(out, "free", e.amount)
        elif e.app_id is None:
            _add(out, F_POOL, e.amount)
        else:
            _add(out, f"app:{e.app_id}", e.amount)
            _add(out, F_APPS, e.amount)
        if e.kind == "grant_free":
            _add(out, "free_granted", e.amount)
        elif e.kind == "lapse":
            _add(out, "lapsed", -e.amount)


def _events(ws: str, items: list[bytes], seen: set[str], out: Changes) -> str:
    """Count the entries ``items`` would write that are not in ``seen`` (references,
    updated); what cannot be read is returned (and not counted)."""
    bad: list[str] = []
    entries: list[LedgerEntry] = []
    for raw in items:
        try:
            ledger, _ = event_rows(ws, [raw])
        except Exception as exc:
            bad.append(f"event {raw[:60]!r}: {exc}")
            continue
        fresh = [e for e in ledger if e.reference not in seen]
        seen.update(e.reference for e in fresh)
        entries += fresh
    ledger_changes(entries, out)
    return "; ".join(bad)


def account(ws: str, pending: Pending, ledger_refs: set[str], period: str) -> Accounted:
    """What ``pending`` changes, ``ledger_refs`` being the references of the view's ledger."""
    out = Accounted(usage_changes(pending.rows, period))
    seen = set(ledger_refs)
    bad = _events(ws, pending.events, seen, out.unflushed)
    if bad:
        out.unreadable.append(bad)
    return out


def held_lines(ws: str, unreadable: list[str], apply: bool) -> list[str]:
    """What reconcile prints of a workspace's unreadable events."""
    out = [f"{ws}: UNREADABLE events not flushed yet: {u}" for u in unreadable]
    if apply and unreadable:
        out.append(f"{ws}: not corrected: Redis took what this version cannot read")
    return out
