"""The admin port's background work in the ``serve`` parent: the flusher, the sweeper of
unconfirmed charges, the projection check, and their gauges (:func:`run_flusher_ctx`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.appkeys import CATALOG, CLOCK, METRICS, REDIS, SETTINGS, STORE
from meter.accounts import projection_check
from meter.accounts.deps import Deps
from meter.admission.admitter import Admitter
from meter.admission.reservations import Sweeper, replay
from meter.usage.batches import Batch
from meter.usage.claims import Claim

log = logging.getLogger(__name__)


async def run_flusher_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the flusher beside the admin port (parent process of ``serve``) and export
    its progress: rows flushed, batches quarantined, flush lag and the owner-notification
    backlog."""
    from meter.usage.flush_stats import KIND_NAMES
    from meter.usage.flusher import Flusher

    settings, metrics, store = app[SETTINGS], app[METRICS], app[STORE]

    def on_batch(claim: Claim, batch: Batch, written: bool) -> None:
        if written:
            metrics.flushed_rows.labels(KIND_NAMES[claim.kind]).inc(batch.rows)

    def on_quarantine(claim: Claim, error: str) -> None:
        metrics.flush_quarantined.labels(KIND_NAMES[claim.kind]).inc()

    flusher = Flusher(
        app[REDIS],
        store,
        settings,
        clock=app[CLOCK],
        on_batch=on_batch,
        on_quarantine=on_quarantine,
    )
    # Confirmations journaled by processes that died are replayed before the sweeper
    # may refund what they forwarded.
    try:
        await replay(app[REDIS], settings.state_dir)
    except Exception:  # Redis down: each sweeper pass replays first (below)
        log.warning("journal replay deferred: redis unavailable", exc_info=True)
    refunds = Admitter(app[REDIS], settings, clock=app[CLOCK])

    async def sweep(app_id: str, rid: str) -> bool:
        """Refund a charge never confirmed as forwarded; counted as every refund is."""
        refunded = await refunds.void(app_id, rid, "")
        if refunded:
            metrics.refunds.inc()
            metrics.swept_refunds.inc()
        return refunded

    sweep_every = min(5.0, settings.refund_window_s / 4)
    # After an outage: a confirmation waiting on its Redis timeout, its retry, and the
    # sweepers of other pods replaying their dead journals, before anything is refunded.
    grace_s = settings.redis_timeout_s + 2 * sweep_every
    sweeper = Sweeper(app[REDIS], flusher.workspaces, sweep, clock=app[CLOCK],
                      state_dir=settings.state_dir, grace_s=grace_s)  # fmt: skip

    async def gauges() -> None:
        while True:
            await asyncio.sleep(settings.flush_interval_s)
            try:  # read from Redis, so it grows even while a pass is stuck
                metrics.flush_lag.set(await flusher.measure_lag())
            except Exception:  # Redis being down shows on /readyz
                log.debug("flush lag not readable", exc_info=True)
            try:
                metrics.outbox_pending.set(await store.pending_events())
                overdue = await store.overdue_events(settings.webhook_max_attempts)
                metrics.outbox_overdue.set(overdue)
            except Exception:  # the store being down shows on /readyz
                log.debug("outbox backlog not readable", exc_info=True)

    stop = asyncio.Event()
    task = asyncio.create_task(flusher.run(stop), name="creditgate-flusher")
    gauge_task = asyncio.create_task(gauges(), name="creditgate-flush-gauges")
    sweep_task = asyncio.create_task(sweeper.run(stop, sweep_every), name="creditgate-sweeper")
    deps = Deps(store, app[REDIS], settings, app[CATALOG], app[CLOCK])
    check_task = asyncio.create_task(
        projection_check.run(
            deps,
            stop,
            settings.projection_check_interval_s,
            lambda kind, n: metrics.projection_repairs.labels(kind).inc(n),
        ),
        name="creditgate-projection-check",
    )
    try:
        yield
    finally:
        stop.set()
        gauge_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sweep_task, 5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(check_task, 5)
        try:
            await asyncio.wait_for(task, settings.shutdown_grace_s + 5)
        except Exception:
            log.exception("flusher did not stop cleanly")
        with contextlib.suppress(Exception):
            await flusher.close()
