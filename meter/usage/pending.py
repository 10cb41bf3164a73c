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
* Quarantined batches (``flush_dead_letters``): resolved, so neither unflushed nor in the
  store until replayed. Their usage and lapses are counted as spent ("quarantined"),
  apart from the unflushed part, so a correction never gives them back. A dead letter
  (or an event) this version cannot read is listed in ``unreadable``: what it took is
  unknown, and reconcile corrects nothing in its workspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.keys import F_APPS, F_POOL
from meter.store import DeadLetter, LedgerEntry
from meter.usage.batches import event_rows, fold_aggregates
from meter.usage.replay import claim_of
from meter.usage.unflushed import Pending, Rows

Changes = dict[str, int]


@dataclass(slots=True)
class Quarantined:
    """One dead letter of the workspace: what it counts, or why it cannot be read."""

    id: str
    kind: str
    error: str  # why the store rejected it
    counted: Changes = field(default_factory=dict)
    unreadable: str = ""  # what this version cannot read of it ("" when all)

    def line(self, ws: str) -> str:
        moved = ", ".join(f"{k} {v:+d}" for k, v in sorted(self.counted.items()) if v)
        what = f"counted as spent: {moved}" if moved else "moves no balance"
        bad = f"; UNREADABLE ({self.unreadable}): what it took is unknown" * bool(self.unreadable)
        return (
            f"{ws}: quarantined batch {self.id} ({self.kind}, rejected: {self.error}), "
            f"{what}{bad}; replay it (creditgate flush --replay-dead-letters)"
        )


@dataclass(slots=True)
class Accounted:
    """``unflushed`` and ``quarantined`` changes per field; ``dead``: one per dead letter;
    ``unreadable``: events of the events list this version cannot read."""

    unflushed: Changes = field(default_factory=dict)
    quarantined: Changes = field(default_factory=dict)
    dead: list[Quarantined] = field(default_factory=list)
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


def _dead(ws: str, d: DeadLetter, period: str, seen: set[str]) -> Quarantined:
    q = Quarantined(d.id, d.kind, d.error)
    try:
        claim = claim_of(d)
    except Exception as exc:
        q.unreadable = str(exc) or type(exc).__name__
        return q
    if claim.kind == "ev":
        q.unreadable = _events(ws, [bytes(i) for i in claim.items], seen, q.counted)
    elif claim.kind == "ag":
        readable: list[bytes] = []
        bad = 0
        for i in range(0, len(claim.items) - 1, 2):
            pair = claim.items[i : i + 2]
            try:  # field by field: one unreadable field leaves the others counted
                fold_aggregates(pair)
            except Exception:
                bad += 1
                continue
            readable += pair
        usage_changes([(claim.bucket, fold_aggregates(readable))], period, q.counted)
        if bad or len(claim.items) % 2:
            q.unreadable = f"{bad + len(claim.items) % 2} aggregate fields"
    return q  # "sr": billing sessions, no balance


def account(ws: str, pending: Pending, ledger_refs: set[str], period: str) -> Accounted:
    """What ``pending`` changes, ``ledger_refs`` being the references of the view's ledger."""
    out = Accounted(usage_changes(pending.rows, period))
    seen = set(ledger_refs)
    bad = _events(ws, pending.events, seen, out.unflushed)
    if bad:
        out.unreadable.append(bad)
    for d in pending.dead:
        q = _dead(ws, d, period, seen)
        for k, v in q.counted.items():
            _add(out.quarantined, k, v)
        out.dead.append(q)
    return out


def held_lines(ws: str, dead: list[Quarantined], unreadable: list[str], apply: bool) -> list[str]:
    """What reconcile prints of a workspace's dead letters and unreadable events."""
    out = [q.line(ws) for q in dead]
    out += [f"{ws}: UNREADABLE events not flushed yet: {u}" for u in unreadable]
    if apply and (unreadable or any(q.unreadable for q in dead)):
        out.append(f"{ws}: not corrected: Redis took what this version cannot read")
    return out
