"""Owner notifications: outbox events signed and delivered to the workspace webhook.

Events reach the store's outbox from ``admit.lua`` (via the flusher) or from the admin
path (``funds.added``). The notifier claims due events with a lease (so replicas do not
send the same one at once), POSTs each as JSON signed with the workspace secret, marks
it delivered on a 2xx answer and otherwise schedules a retry with exponential backoff,
capped at ``backoff_cap_s``. An event is never given up on: after ``max_attempts`` it is
*overdue* (the store counts it; a warning naming the workspace is logged at each failed
retry) and is retried every ``backoff_cap_s`` until delivered; saving the workspace's
webhook makes it due at once (at most once an hour).

Workspaces are served fairly (see :class:`Notifier`): each has its own task, a round
claims a few events of each, and a receiver that does not answer (timeout, refused,
reset), or answers an error only after half the timeout or more, holds back only its
own workspace, whose other events wait for the failed one's retry without an attempt
counted (a slow error would otherwise hold a delivery slot for a whole batch of them).
Events of a workspace without a webhook are parked (kept, not offered again) until one
is set. Within a workspace events go one at a time, oldest due first. Delivered events
are reduced to tombstones (event id kept, payload dropped) ``retention_s`` after delivery,
a bounded batch per round (``_sweep``).

The HTTP request itself is a :data:`Post` callable supplied by the gateway, so the
metering core never imports an HTTP client. The signature headers, and how a receiver
checks them: :mod:`meter.accounts.webhook_signing`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from config.money import format_amount
from config.urls import url_origin
from meter.accounts.webhook_signing import signed_headers
from meter.redis_layer import keys
from meter.store import OutboxEvent, Store
from meter.timestamps import iso

log = logging.getLogger(__name__)

# Integer micro-dollar fields of admit.lua's events, sent as decimal strings.
MONEY_FIELDS = frozenset({"amount", "balance", "threshold"})
_ENVELOPE = frozenset({"id", "type", "at", "workspace_id"})

# (url, body, headers, tenant): ``tenant``, whose share of name lookups the request
# takes (:func:`meter.redis_layer.keys.tenant` of the workspace and its owner).
Post = Callable[[str, bytes, Mapping[str, str], str], Awaitable[int]]
"""POST ``body`` to ``url`` with ``headers``; return the status (raise on transport errors)."""


PER_WORKSPACE = 10


def lease_ms(timeout_s: float, per_workspace: int = PER_WORKSPACE) -> int:
    """How long a claim holds events: it outlasts a task in which every event is answered
    just before the timeout, so another replica never sends the same event concurrently
    (and saving the webhook leaves events due within it alone, :data:`meter.store.outbox.WAKE`)."""
    return int(timeout_s * (per_workspace + 1) * 1000)


def render(event: OutboxEvent) -> bytes:
    """The JSON body of one notification: an envelope and the event's data."""
    data: dict[str, Any] = {}
    for name, value in event.payload.items():
        if name in _ENVELOPE:
            continue
        if name == "app":
            name = "app_id"
        if name in MONEY_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = format_amount(value)
        data[name] = value
    body = {
        "id": event.event_id,
        "type": event.event_type,
        "workspace_id": event.workspace_id,
        "created_at": iso(event.created_at),
        "data": data,
    }
    return orjson.dumps(body)


@dataclass(slots=True)
class Notifier:
    """Delivers due outbox events; call :meth:`deliver_due` periodically.

    Fair between workspaces: a round claims at most ``per_workspace`` events of each
    workspace (the workspaces taking turns, at most ``batch`` events), and every workspace
    is delivered by its own task, at most ``concurrency`` at once; a workspace already
    being delivered gets no more events until its task ends. So one workspace's backlog,
    or a receiver that answers slowly or never, delays only that workspace.
    """

    store: Store
    post: Post
    max_attempts: int = 12
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0
    timeout_s: float = 5.0
    batch: int = 50
    per_workspace: int = PER_WORKSPACE
    concurrency: int = 50
    clock: Callable[[], float] = time.time
    retention_s: float = 30 * 86400.0  # delivered events kept this long (0: for ever)
    sweep_batch: int = 1000
    sweep_every_s: float = 3600.0
    _sweep_at: float = field(default=0.0, init=False, repr=False)
    _running: dict[str, asyncio.Task[int]] = field(default_factory=dict, init=False, repr=False)
    _closing: bool = field(default=False, init=False, repr=False)

    @property
    def busy(self) -> int:
        """How many workspaces are being delivered now."""
        return len(self._running)

    def backoff_ms(self, attempts: int) -> int:
        """Delay before attempt ``attempts + 1``: doubling, capped, with jitter."""
        # The exponent is bounded: an overdue event's attempts grow for as long as it is
        # retried, and 2.0 ** 1024 does not fit a float.
        doubling = 2.0 ** min(max(0, attempts - 1), 64)
        delay = min(self.backoff_cap_s, self.backoff_base_s * doubling)
        return int(delay * random.uniform(0.75, 1.0) * 1000)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def deliver_due(
        self, wait_s: float | None = None, stop: asyncio.Event | None = None
    ) -> int:
        """One round: claim due events of the workspaces not being delivered now and start
        a task for each such workspace; then wait until a running task ends (at most
        ``wait_s``, or until ``stop`` is set). Returns how many events the tasks that
        ended delivered."""
        if self.retention_s > 0 and not self._closing and self.clock() >= self._sweep_at:
            await self._sweep()
        free = min(self.batch, self.concurrency - len(self._running))
        if free > 0 and not self._closing:
            # At most ``free`` events, so at most ``free`` new workspaces.
            events = await self.store.due_events(
                self._now(),
                free,
                lease_ms=lease_ms(self.timeout_s, self.per_workspace),
                per_workspace=self.per_workspace,
                exclude=tuple(self._running),
            )
            by_ws: dict[str, list[OutboxEvent]] = {}
            for ev in events:
                by_ws.setdefault(ev.workspace_id, []).append(ev)
            loop = asyncio.get_running_loop()
            for ws, evs in by_ws.items():
                self._running[ws] = loop.create_task(self._deliver_ws(ws, evs))
        if not self._running:
            return 0
        waiting: set[asyncio.Future[Any]] = set(self._running.values())
        stopped = None if stop is None else asyncio.ensure_future(stop.wait())
        if stopped is not None:
            waiting.add(stopped)
        try:
            await asyncio.wait(waiting, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopped is not None:
                stopped.cancel()
        return self._reap()

    async def _sweep(self) -> None:
        """Forget events delivered more than ``retention_s`` ago, ``sweep_batch`` at a
        time: again next round while a batch comes back full, else ``sweep_every_s``
        later. A failure is logged and tried again then; delivery goes on."""
        now = self.clock()
        try:
            before = int((now - self.retention_s) * 1000)
            n = await self.store.forget_delivered(before, self.sweep_batch)
        except Exception:
            log.warning("webhooks: forgetting delivered events failed", exc_info=True)
            n = 0
        self._sweep_at = now if n >= self.sweep_batch else now + self.sweep_every_s

    def _reap(self) -> int:
        delivered = 0
        for ws, task in list(self._running.items()):
            if not task.done():
                continue
            del self._running[ws]
            if task.cancelled():
                continue
            if (exc := task.exception()) is not None:
                log.error("webhooks: delivering to workspace %s failed", ws, exc_info=exc)
            else:
                delivered += task.result()
        return delivered

    async def aclose(self, wait_s: float) -> None:
        """Stop: running tasks finish the request in hand (cancelled after ``wait_s``) and
        hand back the events they have not sent (due again at once)."""
        self._closing = True
        tasks = list(self._running.values())
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=wait_s)
        finally:  # also when cancelled itself: no task outlives the notifier
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._reap()

    async def _deliver_ws(self, ws_id: str, events: list[OutboxEvent]) -> int:
        """Events of one workspace, one at a time, in order. An answer other than 2xx
        gets the event its own retry time; no answer at all, or a slow error, stops the
        workspace."""
        ids = [ev.id for ev in events if ev.id is not None]
        ws = await self.store.get_workspace(ws_id)
        if ws is None or not ws.webhook_url or not ws.webhook_secret:
            # Nowhere to send yet: every waiting event of the workspace is parked, and
            # setting a webhook makes them due again (a late re-check every backoff cap).
            now = self._now()
            until = now + int(self.backoff_cap_s * 1000)
            await self.store.postpone_events(ws_id, ids, until, due_at=now, park=True)
            return 0
        delivered, tenant = 0, keys.tenant(ws.id, ws.owner_id)
        overdue: list[OutboxEvent] = []  # failed again at or past max_attempts
        for n, ev in enumerate(events):
            if self._closing:
                await self.store.postpone_events(ws_id, ids[n:], self._now())
                break
            ok, unreachable_until = await self._deliver(
                ev, ws.webhook_url, ws.webhook_secret, tenant
            )
            delivered += ok
            if not ok and ev.attempts + 1 >= self.max_attempts:
                overdue.append(ev)
            if unreachable_until is not None:
                # No answer (timeout, refused, reset) or a slow error: the rest would
                # most likely wait out the timeout too. They, and the workspace's other
                # due events, wait with this one, without counting an attempt.
                now = self._now()
                await self.store.postpone_events(ws_id, ids[n + 1 :], unreachable_until, due_at=now)
                break
        if overdue:
            # One line per workspace and retry (hourly once overdue), so an operator finds
            # which workspace keeps CreditgateWebhookOverdue firing; also for events made
            # due again by migration 20, which never reached attempts == max_attempts here.
            log.warning(
                "webhooks: workspace %s: %d overdue notification(s) failed again at %s "
                "(the oldest %s, %d attempts); retried every %g s until delivered",
                ws_id,
                len(overdue),
                url_origin(ws.webhook_url),  # the owner's URL may carry a token
                overdue[0].event_id,
                overdue[0].attempts + 1,
                self.backoff_cap_s,
            )
        return delivered

    async def _deliver(
        self, ev: OutboxEvent, url: str, secret: str, tenant: str
    ) -> tuple[bool, int | None]:
        """One attempt: (delivered, until when the receiver counts as unreachable)."""
        assert ev.id is not None
        body = render(ev)
        started = self.clock()
        headers = signed_headers(secret, body, ev.event_type, ev.event_id, int(started))
        unreachable = False
        try:
            status = await self.post(url, body, headers, tenant)
            error = f"HTTP {status}"
            # An error answered after half the timeout or more counts as no answer.
            unreachable = status >= 300 and self.clock() - started >= self.timeout_s / 2
        except Exception as exc:  # any transport failure is a failed attempt
            status, error, unreachable = 0, repr(exc), True
        if 200 <= status < 300:
            await self.store.mark_delivered(ev.id, at=self._now())
            return True, None
        attempts = ev.attempts + 1
        retry_at = self._now() + self.backoff_ms(attempts)
        await self.store.mark_failed(ev.id, error, retry_at)
        return False, retry_at if unreachable else None
