"""Delivery of owner notifications: the loop that drives :class:`meter.accounts.notifier.Notifier`.

The notifier decides what to send, signs it and keeps the outbox; this module only does
the HTTP POST, with the application's shared ``ClientSession`` (or its own), which
obeys the egress policy (:mod:`gateway.egress`): a refused address is never connected
to and the attempt fails like any transport error. ``delivery_ctx`` is a
``cleanup_ctx`` generator: it starts the loop with the application and stops it (letting
running deliveries finish the request in hand) at shutdown. Replicas may all run it: the
outbox leases each event to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from gateway import appkeys
from gateway.egress import LOOKUP_TENANT, guarded_session
from meter.accounts.notifier import Notifier, Post

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """How often the outbox is polled and how retries back off (tests shrink these)."""

    poll_s: float = 1.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 3600.0


OPTIONS = web.AppKey("webhook_options", WebhookOptions)


def http_post(session: aiohttp.ClientSession, timeout_s: float) -> Post:
    """A :data:`meter.accounts.notifier.Post` over ``session``: no redirects, bounded time."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def post(url: str, body: bytes, headers: Mapping[str, str], tenant: str) -> int:
        # The receiver's name is looked up within the workspace's tenant's share.
        token = LOOKUP_TENANT.set(tenant)
        try:
            async with session.post(
                url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
            ) as resp:
                await resp.content.read(65_536)  # a receiver's answer is not needed
                return resp.status
        finally:
            LOOKUP_TENANT.reset(token)

    return post


def notifier_for(app: web.Application, session: aiohttp.ClientSession) -> Notifier:
    settings = app[appkeys.SETTINGS]
    opts = app.get(OPTIONS) or WebhookOptions()
    return Notifier(
        store=app[appkeys.STORE],
        post=http_post(session, settings.webhook_timeout_s),
        max_attempts=settings.webhook_max_attempts,
        backoff_base_s=opts.backoff_base_s,
        backoff_cap_s=opts.backoff_cap_s,
        timeout_s=settings.webhook_timeout_s,
        retention_s=settings.outbox_retention_days * 86400.0,
        clock=app.get(appkeys.CLOCK) or time.time,
    )


async def run(app: web.Application, stop: asyncio.Event) -> None:
    """Deliver due notifications until ``stop`` is set."""
    opts = app.get(OPTIONS) or WebhookOptions()
    own: aiohttp.ClientSession | None = None
    notifier: Notifier | None = None
    try:
        while not stop.is_set():
            try:
                if notifier is None and appkeys.STORE in app:
                    session = app.get(appkeys.HTTP)
                    if session is None:
                        own = session = guarded_session(app[appkeys.SETTINGS])
                    notifier = notifier_for(app, session)
                if notifier is not None:
                    # Returns once a workspace's delivery ends (or after poll_s), so the
                    # next round picks up the workspaces that are free again.
                    delivered = await notifier.deliver_due(opts.poll_s, stop)
                    if delivered or notifier.busy:
                        continue
            except Exception:
                log.exception("webhooks: delivery round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), opts.poll_s)
    finally:
        if notifier is not None:
            await notifier.aclose(app[appkeys.SETTINGS].webhook_timeout_s)
        if own is not None:
            await own.close()


async def delivery_ctx(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: run the delivery loop for the application's lifetime."""
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run(app, stop))
    yield
    stop.set()
    try:
        await asyncio.wait_for(task, app[appkeys.SETTINGS].webhook_timeout_s + 1)
    except TimeoutError:
        log.warning("webhooks: delivery loop did not stop in time; cancelled")
