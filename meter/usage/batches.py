"""Turn the contents of a claimed Redis bucket into rows of one store batch.

Aggregate fields are ``<app>\\t<channel>\\t<product>\\t<unit>\\t<metric>``
(:func:`meter.redis_layer.keys.agg_field`; ``|`` between the parts before 0.2).
A billing session is one hash field ``app\\tchannel\\tuser`` (tab-separated) whose value
is comma-separated: ``conv_start,last-conv_start,blocks,bsid,msgs,amount,product,opened``
(see ``lib_sessions.lua`` and :class:`SessionEntry`). Events are JSON objects with
``id``, ``type`` and ``at``. Refund counts (metric ``x``) have no store column: refunds
are already netted out of the other counters.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from meter.redis_layer import keys
from meter.store import LedgerEntry, OutboxEvent, SessionRow, UsageRow
from meter.usage.claims import Claim

_METRICS = {
    "n": "units",
    "m": "messages",
    "f": "amount_free",
    "a": "amount_app",
    "p": "amount_pool",
    "i": "amount_invoiced",
}
AggKey = tuple[str, str, str, str]


@dataclass(slots=True)
class Batch:
    """Rows of one claimed bucket, ready for ``Store.write_flush_batch``."""

    usage: list[UsageRow] = field(default_factory=list)
    sessions: list[SessionRow] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)
    events: list[OutboxEvent] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.usage) + len(self.sessions) + len(self.ledger) + len(self.events)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def fold_aggregates(items: Sequence[bytes | str]) -> dict[AggKey, dict[str, Any]]:
    """Flat ``field, value`` pairs of an aggregate hash -> counters per row key."""
    by_prefix: dict[bytes | str, dict[str, Any]] = {}
    it = iter(items)
    for raw, value in zip(it, it, strict=True):
        # Split off the metric only; the row key is decoded once per row, not per field.
        prefix: bytes | str
        if isinstance(raw, bytes):
            prefix, _, mb = raw.rpartition(b"\t" if b"\t" in raw else b"|")
            metric = mb.decode()
        else:
            prefix, _, metric = raw.rpartition("\t" if "\t" in raw else "|")
        acc = by_prefix.get(prefix)
        if acc is None:
            acc = by_prefix[prefix] = {"refused": {}}
        name = _METRICS.get(metric)
        if name is not None:
            acc[name] = acc.get(name, 0) + int(value)
        elif metric.startswith("r:"):
            refused = acc["refused"]
            refused[metric[2:]] = refused.get(metric[2:], 0) + int(value)
    out: dict[AggKey, dict[str, Any]] = {}
    for prefix, acc in by_prefix.items():
        text = _text(prefix)
        app, channel, product, unit = text.split(keys.SEP if keys.SEP in text else "|")
        row = out.get((app, channel, product, unit))
        if row is None:
            out[(app, channel, product, unit)] = acc
            continue
        # The same row under both separators: a bucket open across the upgrade.
        for name, v in acc.items():
            if name == "refused":
                for reason, n in v.items():
                    row["refused"][reason] = row["refused"].get(reason, 0) + n
            else:
                row[name] = row.get(name, 0) + v
    return out


def usage_rows(ws: str, bucket_s: int, items: Sequence[bytes | str]) -> list[UsageRow]:
    """Usage rows of one aggregate bucket (``bucket_start`` in ms, as the store keeps it)."""
    return [
        UsageRow(ws, bucket_s * 1000, app, channel, product, unit, **counters)
        for (app, channel, product, unit), counters in fold_aggregates(items).items()
    ]


@dataclass(frozen=True, slots=True)
class SessionEntry:
    """One billing-session entry of a ``P:sr`` hash, parsed (see lib_sessions.lua)."""

    conv_start: int
    last: int  # ms after conv_start
    blocks: int
    bsid: str
    messages: int
    amount: int
    product: str
    opened: int | None  # ms: when the block's paying message was admitted

    @classmethod
    def parse(cls, value: bytes | str) -> SessionEntry:
        """``conv_start,last-conv_start,blocks,bsid,msgs,amount,product[,opened]``
        (entries written before ``opened`` was kept have none)."""
        cs, dl, blocks, bsid, msgs, amount, product, *rest = _text(value).split(",")
        opened = int(rest[0]) if rest else None
        return cls(int(cs), int(dl), int(blocks), bsid, int(msgs), int(amount), product, opened)

    def block_start(self, block_ms: int) -> int:
        """Where the newest block begins: ``blocks - 1`` block lengths into the talk."""
        return self.conv_start + max(self.blocks - 1, 0) * block_ms

    def start(self, block_ms: int) -> int:
        """The billing session's start: when the message that opened (and paid) its block
        was admitted, so a session falls in the same hour, day or month as its charge in
        the usage aggregates. An entry without it: the block's start (up to a block
        earlier, in a period before the charge's when the block began before its end)."""
        return self.opened if self.opened is not None else self.block_start(block_ms)


def session_row(
    ws: str, gen: int, field: bytes | str, value: bytes | str, block_ms: int
) -> SessionRow | None:
    """One billing-session snapshot; ``seq`` = the claim's gen, so a later claim wins.

    Field ``app\tchannel\tuser[\tbsid]``; value as :meth:`SessionEntry.parse` reads it.
    ``start_ms`` is :meth:`SessionEntry.start`. None for an entry of no message under the
    conversation's own field: what a refunded block opener leaves as the conversation's
    state (refund.lua), never a session. (A displaced entry of no message is a refunded
    session's snapshot, written over a stored copy of it: kept.)
    """
    app, channel, user, *displaced = _text(field).split("\t")
    e = SessionEntry.parse(value)
    if e.messages == 0 and not displaced:
        return None
    return SessionRow(
        workspace_id=ws,
        id=e.bsid,
        app_id=app,
        channel=channel,
        channel_user=user,
        product=e.product,
        start_ms=e.start(block_ms),
        end_ms=e.conv_start + e.last,
        messages=e.messages,
        amount=e.amount,
        seq=gen,
    )


def session_rows(
    ws: str, gen: int, items: Sequence[bytes | str], block_ms: int
) -> list[SessionRow]:
    """The billing sessions of a ``P:sr`` hash as flat field, value pairs
    (:func:`session_row` each; entries that are no session left out)."""
    rows = []
    for i in range(0, len(items) - 1, 2):
        row = session_row(ws, gen, items[i], items[i + 1], block_ms)
        if row is not None:
            rows.append(row)
    return rows


def event_rows(
    ws: str, items: Sequence[bytes | str]
) -> tuple[list[LedgerEntry], list[OutboxEvent]]:
    """Events -> owner notifications (outbox), and a ``lapse`` ledger entry per expiry.

    An event is ``<ws>:<id>``, except one a script marked ``once`` (the free credits'
    ``expiry:<free_exp>:<free_granted>`` lapse, ``…:<lapsed before>`` for a later lapse of
    the same credits, and ``exhausted:…[:<n>]``, the n-th time they ran out):
    ``<ws>:<once>``. Each such key is one event, so a Redis that lost it (a failover, a
    restart from an older file) and does it again under a new ``e<n>`` produces the same
    id, and the store (ledger reference, outbox id) takes it once.
    """
    ledger: list[LedgerEntry] = []
    outbox: list[OutboxEvent] = []
    for raw in items:
        ev: dict[str, Any] = orjson.loads(raw)
        once = ev.pop("once", None)
        event_id = f"{ws}:{once}" if once else f"{ws}:{ev['id']}"
        at = int(ev.get("at", 0))
        payload = {**ev, "id": event_id, "workspace_id": ws}
        outbox.append(OutboxEvent(ws, event_id, str(ev["type"]), payload, at))
        if ev["type"] == "free_credits.expired" and int(ev.get("amount", 0)) > 0:
            ledger.append(
                LedgerEntry(
                    workspace_id=ws,
                    kind="lapse",
                    amount=-int(ev["amount"]),
                    reference=event_id,
                    created_at=at,
                    pool="free",
                    detail={"event": ev["id"]},
                )
            )
    return ledger, outbox


def build(claim: Claim, block_ms: int = 900_000) -> Batch:
    """The store rows of a claimed bucket (``block_ms``: the billing-session block)."""
    if claim.kind == "ag":
        return Batch(usage=usage_rows(claim.ws, claim.bucket, claim.items))
    if claim.kind == "sr":
        return Batch(sessions=session_rows(claim.ws, claim.gen, claim.items, block_ms))
    ledger, events = event_rows(claim.ws, claim.items)
    return Batch(ledger=ledger, events=events)


def _raw(v: bytes | str) -> Any:
    if isinstance(v, str):
        return v
    try:
        return v.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(v).decode()}


def raw_content(claim: Claim) -> str:
    """A claimed bucket's Redis content as JSON text, for the dead-letter table.

    ``{"kind": "ag"|"sr", "fields": [[field, value], ...]}`` for a hash, ``{"kind": "ev",
    "entries": [...]}`` for the events list; a value that is not UTF-8 is kept as
    ``{"base64": ...}``. orjson escapes control characters (a NUL becomes ``\\u0000``), so
    the text is storable wherever the rejected rows were not.
    """
    items = [_raw(v) for v in claim.items]
    if claim.kind == "ev":
        return orjson.dumps({"kind": claim.kind, "entries": items}).decode()
    pairs = [list(p) for p in zip(items[0::2], items[1::2], strict=False)]
    return orjson.dumps({"kind": claim.kind, "fields": pairs}).decode()
