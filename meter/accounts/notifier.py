"""Owner notifications: outbox events signed and delivered to the workspace webhook.

Events reach the store's outbox from ``admit.lua`` (via the flusher) or from the admin
path (``funds.added``). The notifier claims due events with a lease (so replicas do not
send the same one at once), POSTs each as JSON signed with the workspace secret, marks
it delivered on a 2xx answer and otherwise schedules a retry with exponential backoff;
after ``max_attempts`` it gives up (the event stays in the outbox, undelivered).

The HTTP request itself is a :data:`Post` callable supplied by the gateway, so the
metering core never imports an HTTP client. Signature header::

    X-Creditgate-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the secret>
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from config.money import format_amount
from config.urls import url_origin
from meter.store import OutboxEvent, Store
from meter.timestamps import iso

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Creditgate-Signature"
EVENT_HEADER = "X-Creditgate-Event"
DELIVERY_HEADER = "X-Creditgate-Delivery"
# Integer micro-dollar fields of admit.lua's events, sent as decimal strings.
MONEY_FIELDS = frozenset({"amount", "balance", "threshold"})
_ENVELOPE = frozenset({"id", "type", "at", "workspace_id"})

Post = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]
"""POST ``body`` to ``url`` with ``headers``; return the status (raise on transport errors)."""


def signature(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: constant-time check of the signature header."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


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
    """Delivers due outbox events; call :meth:`deliver_due` periodically."""

    store: Store
    post: Post
    max_attempts: int = 12
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0
    timeout_s: float = 5.0
    batch: int = 50
    clock: Callable[[], float] = time.time

    def backoff_ms(self, attempts: int) -> int:
        """Delay before attempt ``attempts + 1``: doubling, capped, with jitter."""
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, attempts - 1))
        return int(delay * random.uniform(0.75, 1.0) * 1000)

    async def deliver_due(self) -> int:
        """One round: claim due events, deliver them; returns how many were delivered."""
        now = int(self.clock() * 1000)
        # The lease outlasts a round in which every event times out, so a slow receiver
        # never lets another replica send the same event concurrently.
        lease_ms = int(self.timeout_s * (self.batch + 1) * 1000)
        events = await self.store.due_events(now, self.batch, lease_ms=lease_ms)
        by_ws: dict[str, list[OutboxEvent]] = {}
        for ev in events:
            by_ws.setdefault(ev.workspace_id, []).append(ev)
        done = await asyncio.gather(*(self._deliver_ws(ws, evs) for ws, evs in by_ws.items()))
        return sum(done)

    async def _deliver_ws(self, ws_id: str, events: list[OutboxEvent]) -> int:
        """Events of one workspace, in order; each failure gets its own retry time."""
        ws = await self.store.get_workspace(ws_id)
        if ws is None or not ws.webhook_url or not ws.webhook_secret:
            # Nowhere to send yet: the lease expires and the events are offered again,
            # so they reach the owner once a webhook is configured.
            return 0
        delivered = 0
        for ev in events:
            delivered += await self._deliver(ev, ws.webhook_url, ws.webhook_secret)
        return delivered

    async def _deliver(self, ev: OutboxEvent, url: str, secret: str) -> bool:
        assert ev.id is not None
        body = render(ev)
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: ev.event_type,
            DELIVERY_HEADER: ev.event_id,
            SIGNATURE_HEADER: signature(secret, body),
        }
        try:
            status = await self.post(url, body, headers)
            error = f"HTTP {status}"
        except Exception as exc:  # any transport failure is a failed attempt
            status, error = 0, repr(exc)
        if 200 <= status < 300:
            await self.store.mark_delivered(ev.id, at=int(self.clock() * 1000))
            return True
        attempts = ev.attempts + 1
        retry_at: int | None = int(self.clock() * 1000) + self.backoff_ms(attempts)
        if attempts >= self.max_attempts:
            retry_at = None
            log.warning(
                "webhook %s to %s failed %d times; giving up",
                ev.event_id,
                url_origin(url),  # the owner's URL may carry a token
                attempts,
            )
        await self.store.mark_failed(ev.id, error, retry_at)
        return False
