"""What :mod:`meter.usage.reconcile` finds: per workspace, the fields where Redis and the
store disagree, and what explains them (unflushed usage, dead letters)."""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.usage.pending import Quarantined


@dataclass(frozen=True, slots=True)
class Difference:
    """One field where Redis and the store disagree (micro-dollars or units)."""

    workspace_id: str
    field: str
    redis: int | None  # None: missing from Redis
    store: int
    unflushed: int  # signed: what unflushed usage and events change (balances go down)
    quarantined: int = 0  # signed: what dead letters took (meter.usage.pending)

    @property
    def expected(self) -> int:
        """What Redis should hold: the store's value moved by what it has not got."""
        return self.store + self.unflushed + self.quarantined

    @property
    def explained(self) -> bool:
        """The whole gap is usage Redis has not flushed yet."""
        return self.redis == self.expected

    def line(self) -> str:
        shown = "missing" if self.redis is None else str(self.redis)
        tag = "MISMATCH"
        if self.explained:
            tag = "quarantined usage" if self.quarantined else "unflushed usage"
        q = f" quarantined={self.quarantined}" if self.quarantined else ""
        return (
            f"{self.workspace_id} {self.field}: redis={shown} store={self.store} "
            f"unflushed={self.unflushed}{q} expected={self.expected} ({tag})"
        )


@dataclass(slots=True)
class Report:
    """Differences of one workspace; ``applied`` when Redis was corrected (see below)."""

    workspace_id: str
    differences: list[Difference] = field(default_factory=list)
    reprovisioned: bool = False
    applied: bool = False
    corrected: int = 0  # balances the correction wrote (a mismatch gone since: none)
    unsettled: bool = False  # not applied: balances moved while comparing
    # kind ("ag", "sr") -> live buckets found outside their index (indexed if applied)
    stranded: dict[str, list[int]] = field(default_factory=dict)
    # references of the ledger entries the store's values hold that carry a live marker
    marks: list[str] = field(default_factory=list)
    # its dead letters (counted as spent until replayed) and unreadable events
    quarantined: list[Quarantined] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> list[Difference]:
        return [d for d in self.differences if not d.explained]

    @property
    def held(self) -> bool:
        """Redis counted something of it this version cannot read: never corrected."""
        return bool(self.unreadable) or any(q.unreadable for q in self.quarantined)
