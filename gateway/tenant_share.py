"""Each tenant's share of a traffic worker's connections to bots, on both traffic servers.

The pools (:mod:`gateway.fastpath.pool`, :mod:`gateway.bot_connector`) cap connections
per bot address and in all, not per tenant: a workspace could point its apps at another
tenant's bot, or at many addresses, hold every place there, and the other tenant's
messages would wait and time out. A :class:`Shares` in front of each pool bounds what
the messages of one tenant (the owner of the workspace of the app in the request's route,
:meth:`gateway.upstreams.Upstreams.tenant`: one user's workspaces are one tenant) hold:
at most ``per_bot`` places at one bot (``upstream_connections_per_tenant_bot``) and
``total`` in all (``upstream_connections_per_tenant``), by default 3/8 of the pool's
caps, so two tenants at their share leave a quarter of each to the others.

A message takes a :class:`Ticket` before it asks its pool for a connection and holds it
while it waits there, connects and uses its connection; the ticket is freed when the
connection is released, closed or lost, or when the message gives up. Idle keep-alive
connections belong to no tenant. A ``/notify`` message (to the channel's delivery
endpoint, shared by every tenant) takes one as a ``/hooks`` one does; a WebSocket none
(its bot connection is not of this pool: :mod:`gateway.ws_budget`).

A message over its tenant's share waits in arrival order among that tenant's messages,
the tenant's share at one bot blocking none of its messages to other bots. Whoever calls
:meth:`Shares.enter` ends a wait by setting an exception on it (its connect deadline,
its client gone): the wait counts toward the connect timeout as a wait for the pool
does. What the waiter held is given back, a ticket handed to it in the loop pass it
gave up in is passed on; :meth:`Shares.refuse` refuses every waiter (stopping).
Waiters that gave up stay queued until met or most of the queue has given up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

# A wait for a ticket; its result is the Ticket (Any: the pools' waiters take it as theirs).
Wait = asyncio.Future[Any]
# Told of a wait as it starts; returns what to undo once it ends.
OnWait = Callable[[Wait], Callable[[], None]]


class _Entry:
    """One message waiting for a ticket; ``placed``: it holds a place at its bot (its
    tenant's ``at``) and waits for one in all."""

    __slots__ = ("arrival", "key", "placed", "wait")

    def __init__(self, arrival: int, key: Hashable, wait: Wait) -> None:
        self.arrival = arrival
        self.key = key
        self.wait = wait
        self.placed = False

    def __lt__(self, other: _Entry) -> bool:
        return self.arrival < other.arrival


class _Tenant:
    """What one tenant holds (``held`` tickets; ``at`` each bot: its tickets and placed
    waiters there) and who of it waits: for a place at a bot (``queued``, FIFO per bot),
    placed and waiting for one in all (``ready``, a heap by arrival)."""

    __slots__ = ("at", "gone", "held", "name", "queued", "ready", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = 0
        self.at: dict[Hashable, int] = {}
        self.queued: dict[Hashable, deque[_Entry]] = {}
        self.ready: list[_Entry] = []
        self.size = 0  # entries in queued and ready, those that gave up included
        self.gone = 0  # entries that gave up (at most; dropped lazily)


class Ticket:
    """One place of a tenant's share; :meth:`free` (idempotent) gives it back."""

    __slots__ = ("_shares", "_tenant", "key")

    def __init__(self, shares: Shares, tenant: _Tenant, key: Hashable) -> None:
        self._shares: Shares | None = shares
        self._tenant = tenant
        self.key = key

    def free(self) -> None:
        shares, self._shares = self._shares, None
        if shares is not None:
            shares._freed(self._tenant, self.key)


class Shares:
    """Tickets per tenant, at most ``per_bot`` at one bot and ``total`` in all."""

    def __init__(
        self, *, per_bot: int, total: int, waited: Callable[[], None] | None = None
    ) -> None:
        self.per_bot = per_bot
        self.total = total
        self.waited = waited  # called as a message starts waiting (a metric)
        self.refusing: Callable[[], BaseException] | None = None
        self._tenants: dict[str, _Tenant] = {}
        self._arrivals = itertools.count()

    def held(self, tenant: str) -> int:
        """The tickets ``tenant`` holds now."""
        t = self._tenants.get(tenant)
        return 0 if t is None else t.held

    def take(self, tenant: str, key: Hashable) -> Ticket | None:
        """A ticket of ``tenant`` at bot ``key`` if its share has room now, else None
        (:meth:`enter` waits for one): no coroutine for the common case."""
        t = self._tenants.get(tenant)
        if t is None:
            if self.per_bot < 1 or self.total < 1:
                return None  # and no state kept for the tenant
            t = self._tenants[tenant] = _Tenant(tenant)
        at = t.at.get(key, 0)
        if at < self.per_bot and t.held < self.total:  # then no one of it waits before
            t.at[key] = at + 1
            t.held += 1
            return Ticket(self, t, key)
        return None

    async def enter(self, tenant: str, key: Hashable, on_wait: OnWait) -> Ticket:
        """A ticket of ``tenant`` at bot ``key``: at once if its share has room, else
        once its turn comes; what ends the wait (see the module) is raised."""
        now = self.take(tenant, key)
        if now is not None:
            return now
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = _Tenant(tenant)
        at = t.at.get(key, 0)
        if self.refusing is not None:
            self._tidy(t)
            raise self.refusing()
        entry = _Entry(next(self._arrivals), key, asyncio.get_running_loop().create_future())
        t.size += 1
        if at < self.per_bot:
            t.at[key] = at + 1
            entry.placed = True
            heapq.heappush(t.ready, entry)
        else:
            t.queued.setdefault(key, deque()).append(entry)
        if self.waited is not None:
            self.waited()
        undo = on_wait(entry.wait)
        try:
            ticket: Ticket = await entry.wait
            return ticket
        except BaseException:
            self._gave_up(t, entry)
            raise
        finally:
            undo()

    def refuse(self, error: Callable[[], BaseException]) -> None:
        """Stopping: every waiter, now or to come, gets ``error()``."""
        self.refusing = error
        for t in list(self._tenants.values()):
            for entry in [*t.ready, *itertools.chain.from_iterable(t.queued.values())]:
                if not entry.wait.done():
                    entry.wait.set_exception(error())

    def _gave_up(self, t: _Tenant, entry: _Entry) -> None:
        wait = entry.wait
        if wait.done() and not wait.cancelled() and wait.exception() is None:
            wait.result().free()  # handed over in the pass it gave up in: passed on
            return
        t.gone += 1
        if entry.placed:
            entry.placed = False
            self._unplace(t, entry.key)
            self._serve(t)
        if t.gone > 16 and t.gone * 2 > t.size:
            self._compact(t)
        self._tidy(t)

    def _freed(self, t: _Tenant, key: Hashable) -> None:
        """A ticket of ``t`` at ``key`` came back: its places to the next waiters."""
        t.held -= 1
        if not t.size:  # nobody of t waits (most messages): _unplace's count, _tidy
            at = t.at[key] - 1
            if at:
                t.at[key] = at
                return
            del t.at[key]
        else:
            self._unplace(t, key)
            self._serve(t)
        self._tidy(t)

    def _unplace(self, t: _Tenant, key: Hashable) -> None:
        """A place of ``t`` at ``key`` is free: to the first waiter queued for it."""
        at = t.at[key] - 1
        queue = t.queued.get(key)
        while queue:
            entry = queue.popleft()
            t.size -= 1
            if not entry.wait.done():
                entry.placed = True
                heapq.heappush(t.ready, entry)
                t.size += 1
                at += 1
                break
        if queue is not None and not queue:
            del t.queued[key]
        if at:
            t.at[key] = at
        else:
            del t.at[key]

    def _serve(self, t: _Tenant) -> None:
        """Tickets to the placed waiters that waited longest, while ``t`` has room."""
        ready = t.ready
        while t.held < self.total and ready:
            entry = heapq.heappop(ready)
            t.size -= 1
            if entry.wait.done():
                continue  # gave up: its place, if still held, is given back as it leaves
            entry.placed = False  # the ticket holds its place now
            t.held += 1
            entry.wait.set_result(Ticket(self, t, entry.key))

    def _compact(self, t: _Tenant) -> None:
        """Most of ``t``'s queue gave up: drop them."""
        for key, queue in list(t.queued.items()):
            live = deque(e for e in queue if not e.wait.done())
            if live:
                t.queued[key] = live
            else:
                del t.queued[key]
        t.ready = [e for e in t.ready if not e.wait.done()]
        heapq.heapify(t.ready)
        t.size = len(t.ready) + sum(len(q) for q in t.queued.values())
        t.gone = 0

    def _tidy(self, t: _Tenant) -> None:
        """No state kept for a tenant that holds nothing: every waiter it still lists
        gave up (a live one holds a place at its bot, or waits for a place held)."""
        if not t.held and not t.at and self._tenants.get(t.name) is t:
            del self._tenants[t.name]
