"""Hot-path metrics accumulated in plain Python and written to Prometheus on an interval.

In multi-process mode every ``inc``/``observe`` of prometheus-client writes an mmap'd
file (and checks the process id), several times per request: about an eighth of a
worker's CPU under load. The per-request metrics go through these wrappers instead: an
update is an addition to a Python number, and :meth:`MetricBuffer.flush` (every
``metrics_flush_s``, and at shutdown) hands the accumulated deltas to the real values,
one write per value. ``/metrics`` is exact up to the last flush.

Histograms are flushed through prometheus-client's per-bucket values (``_buckets``,
``_sum``), the same ones ``observe`` writes; ``tests/test_metric_buffer.py`` pins that a
flushed histogram exposes exactly what direct observations would.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram


class BufferedCounter:
    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class BufferedGauge:
    """``inc``/``dec`` only (a net delta); ``set`` goes straight through."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def dec(self, amount: float = 1) -> None:
        self._pending -= amount

    def set(self, value: float) -> None:
        self._pending = 0.0
        self._child.set(value)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class BufferedHistogram:
    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child: Any = child  # its per-bucket values are not in the typed API
        self._bounds: list[float] = list(self._child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        # prometheus-client stores non-cumulative counts: the first bucket whose upper
        # bound is >= amount (the last bound is +Inf).
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        child = self._child
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)
        child._sum.inc(total)


class MetricBuffer:
    """The buffered wrappers of one process, flushed together."""

    def __init__(self) -> None:
        self._items: list[BufferedCounter | BufferedGauge | BufferedHistogram] = []

    def counter(self, child: Counter) -> BufferedCounter:
        item = BufferedCounter(child)
        self._items.append(item)
        return item

    def gauge(self, child: Gauge) -> BufferedGauge:
        item = BufferedGauge(child)
        self._items.append(item)
        return item

    def histogram(self, child: Histogram) -> BufferedHistogram:
        item = BufferedHistogram(child)
        self._items.append(item)
        return item

    def flush(self) -> None:
        for item in self._items:
            item.flush()

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            with contextlib.suppress(Exception):
                self.flush()
