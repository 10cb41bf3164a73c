"""Prometheus metrics of the gateway, one :class:`Metrics` object per process.

Names follow ``creditgate_<thing>_<unit>``; no label carries an unbounded value (the
channel label is a built-in or configured channel name, else ``other``). Money is
counted in integer micro-dollars (``creditgate_charged_microdollars_total``): a float sum
of dollar amounts would drift (0.2 + 0.2 + 0.2 = 0.6000000000000001), an integer
count stays exact up to 2**53 micro-dollars. Across worker processes the values
live in ``PROMETHEUS_MULTIPROC_DIR`` (set by ``creditgate serve`` before any worker
starts) and :func:`exposition` merges them; tests pass a fresh ``CollectorRegistry``.

``creditgate_requests_total{outcome}`` says who a request's fate is down to, so an alert
on the gateway's own errors cannot be fired by a tenant or by anyone on the internet
(:func:`gateway.counting.outcome_of` decides, for both traffic servers):

* ``admitted`` / ``unmetered``: served, charged or not;
* ``refused``: the tenant's rules said no (admission: credit, limits, licence,
  suspension, duplicates; channel authentication), ``creditgate_refusals_total`` says why;
* ``client_error``: the request could not be served as sent: no such app
  (``unknown_app``), an invalid, too large or stalled request, a loop, a client gone;
* ``bot_error``: the app's bot failed (unreachable, too slow, 5xx, a wrong handshake
  answer) or has no usable address (``no_upstream``, ``upstream_forbidden``);
* ``error``: the gateway's own failure (500 ``internal_error``; 503
  ``metering_unavailable``, ``channel_auth_unavailable``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metric_buffer import MetricBuffer
from meter.refusals import COUNTED

OUTCOMES = ("admitted", "refused", "unmetered", "client_error", "bot_error", "error")
POOLS = ("free", "app", "pool")
UPSTREAM_OUTCOMES = ("ok", "5xx", "connect", "timeout")
REFUSALS = COUNTED  # labels declared up front (meter.refusals); others appear when seen
FLUSH_KINDS = ("usage", "sessions", "events")
OTHER = "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_dir() -> str | None:
    """The shared metrics directory when several processes serve, else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every creditgate metric, registered on ``registry``.

    Label children of the per-request counters are bound once here, so the hot path
    does a dict lookup instead of ``labels()``.
    """

    def __init__(self, registry: CollectorRegistry, channels: Iterable[str] = ()) -> None:
        self.registry = registry
        r = registry
        self.requests = Counter(
            "creditgate_requests_total",
            "Inbound traffic requests and WebSocket messages by channel and outcome: "
            "admitted, unmetered, refused (the tenant's rules), client_error (no such app, "
            "an invalid request), bot_error (the app's bot failed), error (the gateway's own).",
            ["channel", "outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "creditgate_refusals_total", "Messages refused, by reason.", ["reason"], registry=r
        )
        self.projection_repairs = Counter(
            "creditgate_projection_repairs_total",
            "Redis projections repaired from the store by the periodic check, by kind "
            "(workspace, workspace_rebuilt, app, grant; grant_marker: a lost marker restored "
            "without credit; workspace_missing: a lost workspace not rebuilt yet, Redis "
            "still holds its unflushed usage).",
            ["kind"],
            registry=r,
        )
        self.shadow_refusals = Counter(
            "creditgate_shadow_refusals_total",
            "Refusals that shadow mode counted but did not apply (the message was served).",
            ["reason"],
            registry=r,
        )
        self.admission_seconds_metric = Histogram(
            "creditgate_admission_seconds",
            "Time to an admission decision (Redis round trip included).",
            buckets=_FAST,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "creditgate_upstream_seconds",
            "Time from forwarding a request to the bot's response headers.",
            ["outcome"],
            buckets=_SLOW,
            registry=r,
        )
        self.charged = Counter(
            "creditgate_charged_microdollars_total",
            "Money debited by admissions (gross of refunds) in micro-dollars, by balance.",
            ["pool"],
            registry=r,
        )
        self.settled_on_credit = Counter(
            "creditgate_settled_on_credit_microdollars_total",
            "Fail-open settlements the balances could not pay: micro-dollars taken from "
            "the workspace's pool below zero (owed, covered by its next payment to the pool).",
            registry=r,
        )
        self.sessions_started = Counter(
            "creditgate_sessions_started_total", "Billing sessions opened.", registry=r
        )
        self.refunds = Counter(
            "creditgate_refunds_total",
            "Charged admissions reversed: the bot failed, a charge voided, or one never "
            "confirmed as forwarded (swept, counted again in creditgate_swept_refunds_total).",
            registry=r,
        )
        self.swept_refunds = Counter(
            "creditgate_swept_refunds_total",
            "Charges the sweeper refunded: never confirmed as forwarded within the refund "
            "window (a gateway died between charge and forward).",
            registry=r,
        )
        self.redis_errors = Counter(
            "creditgate_redis_errors_total",
            "Admissions or look-ups that Redis did not answer in time.",
            registry=r,
        )
        self.in_flight_metric = Gauge(
            "creditgate_in_flight_requests",
            "Traffic requests being handled now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_websockets_metric = Gauge(
            "creditgate_open_websockets",
            "WebSockets proxied now (upgrades under way included), at most WS_MAX_CONNECTIONS "
            "per worker.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.unsettled = Gauge(
            "creditgate_unsettled_admissions",
            "Fail-open admissions served but not yet settled, plus charges awaiting a void.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.flush_lag = Gauge(
            "creditgate_flush_lag_seconds",
            "Age of the oldest usage bucket not yet written to the durable store.",
            registry=r,
            multiprocess_mode="max",
        )
        self.clock_offset = Gauge(
            "creditgate_clock_offset_seconds",
            "Redis's clock minus this host's, as last measured: admissions are stamped "
            "with Redis's clock (meter/redis_layer/clock.py).",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.clock_synced = Gauge(
            "creditgate_clock_synced",
            "1 once this process's metering clock follows Redis's (its first sync), 0 "
            "before: it then admits nothing (the lowest of the processes).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.flushed_rows = Counter(
            "creditgate_flushed_rows_total",
            "Rows written to the durable store by the flusher.",
            ["kind"],
            registry=r,
        )
        self.flush_quarantined = Counter(
            "creditgate_flush_quarantined_total",
            "Flush batches the store rejected, moved to its flush_dead_letters table.",
            ["kind"],
            registry=r,
        )
        for kind in FLUSH_KINDS:  # exported at 0, so the first quarantine is an increase
            self.flush_quarantined.labels(kind)
        self.outbox_pending = Gauge(
            "creditgate_webhook_outbox_pending",
            "Owner notifications waiting for delivery.",
            registry=r,
            multiprocess_mode="max",
        )
        self.outbox_overdue = Gauge(
            "creditgate_webhook_outbox_overdue",
            "Owner notifications failed WEBHOOK_MAX_ATTEMPTS times or more, still retried.",
            registry=r,
            multiprocess_mode="max",
        )
        self.client_disconnects = Counter(
            "creditgate_client_disconnects_total",
            "Requests whose client went away before the answer was sent.",
            registry=r,
        )
        self.tenant_share_waits = Counter(
            "creditgate_tenant_share_waits_total",
            "Messages that waited for a place of their tenant's share of bot connections.",
            registry=r,
        )
        self.gc_seconds_metric = Counter(
            "creditgate_gc_seconds",
            "Time traffic processes spent in garbage collections.",
            registry=r,
        )
        self.batch_size_metric = Histogram(
            "creditgate_admission_batch_size",
            "Admissions carried by one admit.lua call.",
            buckets=_BATCH,
            registry=r,
        )
        # What every request updates is buffered (gateway/metric_buffer.py): plain
        # additions here, written to the shared values on an interval and at scrape time.
        self.buffer = b = MetricBuffer()
        labels = {*channels, OTHER}
        self.request_children = {
            (ch, o): b.counter(self.requests.labels(ch, o)) for ch in labels for o in OUTCOMES
        }
        self.refusal_children = {r: b.counter(self.refusals.labels(r)) for r in REFUSALS}
        self.charged_children = tuple(b.counter(self.charged.labels(p)) for p in POOLS)
        self.upstream_children = {
            o: b.histogram(self.upstream_seconds.labels(o)) for o in UPSTREAM_OUTCOMES
        }
        self.in_flight = b.gauge(self.in_flight_metric)
        self.open_websockets = b.gauge(self.open_websockets_metric)
        self.admission_seconds = b.histogram(self.admission_seconds_metric)
        self.batch_size = b.histogram(self.batch_size_metric)
        self.gc_seconds = b.counter(self.gc_seconds_metric)

    def count(self, channel_label: str, outcome: str) -> None:
        self.request_children[(channel_label, outcome)].inc()

    def refused(self, reason: str) -> None:
        child = self.refusal_children.get(reason)
        if child is None:
            child = self.refusal_children[reason] = self.buffer.counter(
                self.refusals.labels(reason)
            )
        child.inc()

    def clock_followed(self, offset: float) -> None:
        """The metering clock synced: Redis's clock is ``offset`` s ahead of the host's."""
        self.clock_offset.set(offset)
        self.clock_synced.set(1)

    def charge(self, free: int, app: int, pool: int) -> None:
        """Record a debit given in micro-dollars."""
        for child, micros in zip(self.charged_children, (free, app, pool), strict=True):
            if micros:
                child.inc(micros)


def exposition(metrics: Metrics) -> bytes:
    """The Prometheus text exposition: this process's registry, or all processes' values
    (other processes' buffers as of their last flush)."""
    metrics.buffer.flush()
    path = multiprocess_dir()
    if path is None:
        return generate_latest(metrics.registry)
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)  # type: ignore[no-untyped-call]
    return generate_latest(merged)
