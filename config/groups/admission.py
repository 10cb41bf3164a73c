"""The admission engine: metering, fail mode, batching, Redis timeouts and durability.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.fields import Seconds


class AdmissionSettings(BaseModel):
    # metering=false proxies without admission: a benchmark
    # baseline, never for production.
    metering: bool = True
    fail_mode: Literal["closed", "open"] = "closed"
    redis_timeout_s: Seconds = 0.5
    clock_sync_s: Seconds = 15.0  # how often the metering clock re-measures Redis's
    batch_max: int = Field(256, ge=1, le=10_000)
    # An admission call goes out once this many messages wait (or the loop pass ends).
    batch_dispatch_at: int = Field(32, ge=1, le=10_000)
    # Traffic workers: collect and freeze the start-up heap (the collector never walks
    # it again) and run generation-0 collections this rarely (allocations).
    # Per-request metrics are summed in each process and written to the shared
    # Prometheus values this often (and at every scrape of the process itself).
    metrics_flush_s: Seconds = 1.0
    gc_freeze: bool = True
    gc_threshold: int = Field(50_000, ge=100)
    # "async": Redis's own asynchronous replication (a master killed mid-run loses what
    # it had not yet sent to its replica). "replicated": each admission call is followed
    # by WAIT for redis_replicas replicas and only then acknowledged.
    redis_durability: Literal["async", "replicated"] = "async"
    redis_replicas: int = Field(1, ge=1, le=16)
