"""What the flusher counts: per-pass results and the cumulative stats the metrics read."""

from __future__ import annotations

from dataclasses import dataclass, field

from meter.usage.claims import BucketKind

KIND_NAMES: dict[BucketKind, str] = {"ag": "usage", "sr": "sessions", "ev": "events"}


@dataclass(slots=True)
class FlushStats:
    """Cumulative counters and gauges, read by the gateway's metrics exporter.

        ``rows`` counts rows written by kind (``usage``, ``sessions``, ``events``);
        ``quarantined`` batches moved to the dead-letter table, ``replayed`` dead letters written
    since; ``lag_seconds`` is the age of
        the oldest closed-but-unflushed bucket at the latest :meth:`Flusher.measure_lag`.
    """

    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KIND_NAMES.values(), 0))
    batches: int = 0
    duplicates: int = 0
    retaken: int = 0
    write_errors: int = 0
    redis_errors: int = 0
    quarantined: int = 0
    replayed: int = 0
    passes: int = 0
    lag_seconds: float = 0.0
    last_pass_at: float = 0.0


@dataclass(slots=True)
class PassResult:
    """What one pass did."""

    batches: int = 0
    duplicates: int = 0
    rows: int = 0
    busy: int = 0
    failed: int = 0
    quarantined: int = 0
    replayed: int = 0  # dead letters written now (:mod:`meter.usage.replay`)
    lag_seconds: float = 0.0

    def add(self, other: PassResult) -> None:
        self.batches += other.batches
        self.duplicates += other.duplicates
        self.rows += other.rows
        self.busy += other.busy
        self.failed += other.failed
        self.quarantined += other.quarantined
        self.replayed += other.replayed
        self.lag_seconds = max(self.lag_seconds, other.lag_seconds)
