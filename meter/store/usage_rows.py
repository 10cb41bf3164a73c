"""Typed usage rows of the durable store: aggregates, billing sessions, series points,
flush batches and dead letters (conventions as in :mod:`meter.store.models`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class Amounts:
    """What usage counts besides units: messages, money by balance (micro-dollars) and
    refusals by reason. A stored row has them, and so has a series point (a sum of rows)."""

    messages: int = 0
    amount_free: int = 0
    amount_app: int = 0
    amount_pool: int = 0
    amount_invoiced: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    @property
    def amount(self) -> int:
        """Everything charged: debited from credits plus counted for invoicing."""
        return self.amount_free + self.amount_app + self.amount_pool + self.amount_invoiced


@dataclass(frozen=True, slots=True)
class UsageRow(Amounts):
    """Counters of one flush bucket for one ``(app, channel, product, unit)``."""

    workspace_id: str
    bucket_start: int
    app_id: str
    channel: str
    product: str
    unit: str
    units: int = 0

    @property
    def key(self) -> tuple[int, str, str, str, str]:
        return (self.bucket_start, self.app_id, self.channel, self.product, self.unit)


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One billing session (one started block of a conversation).

    ``seq`` orders snapshots of the same session: see ``write_flush_batch``.
    """

    workspace_id: str
    id: str
    app_id: str
    channel: str
    channel_user: str
    product: str
    start_ms: int
    end_ms: int
    messages: int
    amount: int
    seq: int = 0


@dataclass(frozen=True, slots=True)
class UsagePoint(Amounts):
    """Sums over one period of a usage series (or over a whole range, for totals)."""

    start: int
    units: dict[str, int] = field(default_factory=dict)  # by unit: session|request|...

    @property
    def sessions(self) -> int:
        return self.units.get("session", 0)

    @property
    def requests(self) -> int:
        return self.units.get("request", 0)

    @property
    def notifications(self) -> int:
        return self.units.get("notification", 0)

    @property
    def total_units(self) -> int:
        return sum(self.units.values())


@dataclass(frozen=True, slots=True)
class FlushBatch:
    id: str
    workspace_id: str
    kind: str
    bucket_start: int
    rows: int
    flushed_at: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A flush batch the store rejected, kept with its raw Redis content (JSON text)."""

    id: str  # the batch id, <ws>:<kind>:<bucket>:<gen>
    workspace_id: str
    kind: str
    bucket_start: int  # ms
    content: str
    error: str
    attempts: int
    first_failed_at: int
    last_failed_at: int
