"""Buffered hot-path metrics expose exactly what direct updates would, once flushed."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.metric_buffer import MetricBuffer
from gateway.metrics import Metrics, exposition

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


def text(r: CollectorRegistry) -> list[str]:
    """The exposition without the creation timestamps (they differ per registry)."""
    return [ln for ln in generate_latest(r).decode().splitlines() if "_created" not in ln]


def test_flushed_values_equal_direct_updates() -> None:
    direct_r, buffered_r = pair()
    made = {}
    for name, r in (("direct", direct_r), ("buffered", buffered_r)):
        made[name] = (
            Counter("c_total", "c", ["k"], registry=r),
            Gauge("g", "g", registry=r),
            Histogram("h_seconds", "h", ["o"], buckets=BUCKETS, registry=r),
        )
    c, g, h = made["direct"]
    buf = MetricBuffer()
    bc, bg, bh = made["buffered"]
    counter, gauge, hist = (
        buf.counter(bc.labels("x")),
        buf.gauge(bg),
        buf.histogram(bh.labels("ok")),
    )
    rng = random.Random(7)
    # Values on the bucket bounds too: "le" is inclusive.
    values = [*BUCKETS, 0.0, 5.0, *(rng.random() * rng.choice((0.01, 1, 3)) for _ in range(500))]
    for v in values:
        h.labels("ok").observe(v)
        hist.observe(v)
        c.labels("x").inc(2)
        counter.inc(2)
        g.inc()
        gauge.inc()
        if v > 0.5:
            g.dec()
            gauge.dec()
    assert text(buffered_r) != text(direct_r)  # nothing written yet
    buf.flush()
    assert text(buffered_r) == text(direct_r)
    buf.flush()  # a second flush adds nothing
    assert text(buffered_r) == text(direct_r)


def test_a_scrape_of_the_process_flushes_first() -> None:
    m = Metrics(CollectorRegistry(), ["web"])
    m.count("web", "admitted")
    m.refused("credits_exhausted")
    m.admission_seconds.observe(0.003)
    text = exposition(m).decode()
    assert 'creditgate_requests_total{channel="web",outcome="admitted"} 1.0' in text
    assert 'creditgate_refusals_total{reason="credits_exhausted"} 1.0' in text
    assert "creditgate_admission_seconds_count 1.0" in text
