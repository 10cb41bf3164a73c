"""Where an app's bot runtime lives: ``app_id`` -> upstream base URL.

Read from the app hash field ``up`` in Redis (:func:`meter.redis_layer.keys.app_key`), falling back
to ``settings.default_upstream_url``. Each process caches an answer for at most
``max_age`` seconds (so an app changed through the admin API is followed within a
second), coalesces concurrent look-ups of one app, reads an answer again in the
background when a message comes in the last eighth of its age (an app with steady
traffic never makes a message wait for the read), and keeps serving a stale answer
while Redis does not answer (traffic that fail-open mode serves still needs a target).

With the URL comes the app's tenant (:meth:`Upstreams.tenant`): whose share of a
worker's connections its traffic takes (:mod:`gateway.tenant_share`,
:mod:`gateway.ws_budget`). That is the workspace's owner (its hash's ``own``), so the
workspaces one customer owns share one share; the workspace itself when no owner is
projected (a workspace written by an older version, until projected again).

And the app's standing (:meth:`Upstreams.refusal`), read with them: ``app_suspended``
for a suspended app, ``product_not_licensed`` for an app of an enterprise workspace
without a licence for its product (one more read, enterprise workspaces only), as
admit.lua decides them; nothing in shadow mode (its refusals are not applied). A
callback the channel's rules skip is never admitted, so this is what refuses it
(:func:`gateway.traffic_rules.admit`); a billable message's admission decides its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from redis.exceptions import RedisError

from gateway.single_flight import AHEAD, SingleFlight
from meter.errors import MeteringUnavailable
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, hard_deadline

NO_UPSTREAM = ""  # the app exists but has no upstream and there is no default
MAX_ENTRIES = 100_000


class _Entry(NamedTuple):
    expires: float
    url: str | None  # None: no such app
    tenant: str  # "@<owner>", or the workspace without a projected owner
    refusal: str  # "", "app_suspended" or "product_not_licensed" (see the module)


class Upstreams:
    """Cached app -> upstream URL resolution."""

    def __init__(
        self,
        client: RedisClient,
        *,
        default_url: str | None,
        timeout: float,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock
        self._default = default_url or ""
        self._timeout = timeout
        self._max_age = max_age
        self._ahead = max_age * AHEAD  # an answer with less left is read again ahead
        self._cache: dict[str, _Entry] = {}
        self._loads: SingleFlight[str, str | None] = SingleFlight()

    async def resolve(self, app_id: str) -> str | None:
        """Base URL as configured; ``None`` for an unknown app;
        :data:`NO_UPSTREAM` when the app has none. Raises :class:`MeteringUnavailable`
        when Redis does not answer and nothing is cached."""
        entry = self._cache.get(app_id)
        if entry is not None:
            left = entry.expires - self._clock()
            if left > self._ahead:
                return entry.url
        ws = keys.workspace_of(app_id)
        if ws is None:
            return None
        # partial, not lambda: a closure would make cells of these names on every call.
        if entry is not None and left > 0:  # read again ahead: nobody waits for it
            self._loads.prefetch(app_id, partial(self._fetch, ws, app_id, entry))
            return entry.url
        return await self._loads.run(app_id, partial(self._fetch, ws, app_id, entry))

    def tenant(self, app_id: str) -> str | None:
        """The tenant of ``app_id`` (see the module) as last read; its workspace when it
        was never read (or forgotten): the owner never changes, a stale answer serves."""
        entry = self._cache.get(app_id)
        return entry.tenant if entry is not None else keys.workspace_of(app_id)

    async def refusal(self, app_id: str) -> str:
        """Why a callback to ``app_id`` that is not metered is refused ("" when it is not;
        see the module), as last read by :meth:`resolve`. An entry forgotten since (the
        cache is emptied when full: anyone can fill it with made-up ids) is read again,
        never taken as "not refused"; still missing after two reads, Redis is treated as
        unanswering (:class:`MeteringUnavailable`), never as a pass."""
        for _ in range(2):
            entry = self._cache.get(app_id)
            if entry is not None:
                return entry.refusal
            await self.resolve(app_id)
        entry = self._cache.get(app_id)
        if entry is None:
            raise MeteringUnavailable("the app's standing could not be kept", ambiguous=False)
        return entry.refusal

    async def _read(self, ws: str, app_id: str) -> tuple[list[Any], Any, str]:
        wk = keys.ws_key(ws)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.app_key(ws, app_id), ["product", "up", "suspended", "shadow"])
            pipe.hmget(wk, ["own", "type"])
            app, (owner, kind) = await pipe.execute()
        product, _, suspended, shadow = app
        refusal = ""
        if product is not None and shadow != b"1":
            if suspended == b"1":
                refusal = "app_suspended"
            elif kind == b"enterprise" and not await self._client.hexists(wk, b"l:" + product):
                refusal = "product_not_licensed"
        return app, owner, refusal

    async def _fetch(self, ws: str, app_id: str, stale: _Entry | None) -> str | None:
        try:
            # A hard deadline (see hard_deadline): the request is answered in time.
            app, owner, refusal = await hard_deadline(self._read(ws, app_id), self._timeout)
            product, up = app[0], app[1]
        except (RedisError, OSError, TimeoutError) as exc:
            if stale is not None:
                return stale.url
            raise MeteringUnavailable(f"redis: {exc!r}", ambiguous=False) from None
        url = None
        if product is not None:
            text = up.decode() if isinstance(up, bytes) else (up or "")
            url = text or self._default
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()
        tenant = keys.tenant(ws, owner.decode() if isinstance(owner, bytes) else owner)
        self._cache[app_id] = _Entry(self._clock() + self._max_age, url, tenant, refusal)
        return url
