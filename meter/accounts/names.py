"""Host-name lookups of tenant-chosen destinations (bots, owner webhooks), bounded.

libc's ``getaddrinfo`` (``loop.getaddrinfo``, aiohttp's ``ThreadedResolver``) runs on a
small pool of threads (uvloop: libuv's 4 per process) that a name whose DNS never
answers holds for as long as libc waits (``timeout`` x ``attempts`` of resolv.conf),
whatever the caller's deadline: four such names, and every lookup of the process waits
(other tenants' bots, Redis, PostgreSQL, Stripe by name). :class:`Names` asks c-ares
(:mod:`aiodns`) instead: one event thread for any number of queries, the system's
nameservers and hosts file (``/etc/hosts``), with a short timeout and few tries; so a
tenant's lookups never share a bounded pool with the gateway's own connections. On
top of it:

* concurrent lookups of one name share one query, whose answer (or failure) is kept a
  little while (:data:`ANSWER_S`, :data:`FAILURE_S`): a hanging name costs one query per
  :data:`FAILURE_S`, however many messages ask;
* a tenant has at most :data:`PER_TENANT` lookups in progress; more wait their turn
  (within the caller's deadline), so one tenant's many hanging names delay only its own.

The answer is only addresses: the caller applies the egress policy to every one of
them at each connection (:mod:`gateway.egress`), cached or not, so caching makes DNS
rebinding no easier. One :class:`Names` per event loop (:func:`shared`).
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Hashable

import aiodns

TIMEOUT_S = 1.0  # c-ares: a try's timeout (a nameserver's answer or the next try)
TRIES = 2
LOOKUP_S = 5.0  # a lookup fails by then, whatever c-ares does
ANSWER_S = 10.0  # how long an answer is kept (as aiohttp's ttl_dns_cache)
FAILURE_S = 3.0  # how long a failure is kept
PER_TENANT = 16  # lookups of one tenant in progress at once
MAX_KEPT = 10_000  # answers and failures kept at most

Address = tuple[socket.AddressFamily, str]  # (family, address)
_Key = tuple[str, int]  # (host, family)


class LookupFailed(OSError):
    """The name has no address now (no such name, no answer in time, or none usable)."""


class Names:
    """Coalesced, remembered, per-tenant bounded lookups over one c-ares channel."""

    def __init__(self, nameservers: list[str] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        # The system's nameservers (resolv.conf) unless given (tests: a stand-in server).
        self._resolver = aiodns.DNSResolver(
            nameservers or None, loop=self.loop, timeout=TIMEOUT_S, tries=TRIES
        )
        self._kept: dict[_Key, tuple[float, list[Address] | str]] = {}
        self._pending: dict[_Key, asyncio.Task[list[Address]]] = {}
        self._turns: dict[Hashable, asyncio.Semaphore] = {}
        self._users: dict[Hashable, int] = {}  # callers holding or awaiting a turn

    def in_progress(self) -> int:
        """Lookups asked of c-ares and not yet ended."""
        return len(self._pending)

    async def lookup(
        self,
        host: str,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        tenant: Hashable | None = None,
    ) -> list[Address]:
        """``host``'s addresses (at least one), or :class:`LookupFailed`. ``tenant``'s
        lookups wait beyond :data:`PER_TENANT` in progress; the caller bounds the wait."""
        key = (host, int(family))
        task = self._joinable(key)
        if isinstance(task, list):
            return task
        if task is None:
            if tenant is None:
                task = self._start(key, None)
            else:
                task = await self._start_in_turn(key, tenant)
                if isinstance(task, list):
                    return task
        # shielded: a caller leaving (its deadline) ends neither the query nor its
        # other callers' wait; the query ends by LOOKUP_S anyway.
        return list(await asyncio.shield(task))

    def _joinable(self, key: _Key) -> list[Address] | asyncio.Task[list[Address]] | None:
        """The kept answer (raising a kept failure), else the lookup in progress."""
        kept = self._kept.get(key)
        if kept is not None:
            if kept[0] > self.loop.time():
                if isinstance(kept[1], str):
                    raise LookupFailed(kept[1])
                return list(kept[1])
            del self._kept[key]
        return self._pending.get(key)

    async def _start_in_turn(
        self, key: _Key, tenant: Hashable
    ) -> list[Address] | asyncio.Task[list[Address]]:
        turn = self._turns.get(tenant)
        if turn is None:
            turn = self._turns[tenant] = asyncio.Semaphore(PER_TENANT)
        self._users[tenant] = self._users.get(tenant, 0) + 1
        try:
            await turn.acquire()
        except BaseException:
            self._leave(tenant)
            raise
        try:
            found = self._joinable(key)  # another caller may have asked meanwhile
        except BaseException:
            self._free(tenant)
            raise
        if found is not None:
            self._free(tenant)
            return found
        return self._start(key, tenant)

    def _start(self, key: _Key, tenant: Hashable | None) -> asyncio.Task[list[Address]]:
        task = self.loop.create_task(self._ask(key))
        self._pending[key] = task
        task.add_done_callback(lambda t: self._ended(key, tenant, t))
        return task

    async def _ask(self, key: _Key) -> list[Address]:
        host, family = key
        try:
            async with asyncio.timeout(LOOKUP_S):
                result = await self._resolver.getaddrinfo(
                    host, family=socket.AddressFamily(family), type=socket.SOCK_STREAM
                )
        except TimeoutError:
            raise LookupFailed(f"{host}: no answer in {LOOKUP_S:g} s") from None
        except aiodns.error.DNSError as exc:
            why = exc.args[1] if len(exc.args) > 1 else "lookup failed"
            raise LookupFailed(f"{host}: {why}") from None
        found: list[Address] = []
        for node in result.nodes:
            addr = node.addr[0].decode("ascii")
            if node.family == socket.AF_INET6 and len(node.addr) > 3 and node.addr[3]:
                addr = f"{addr}%{node.addr[3]}"  # a zone: link-local, judged as such
            if (node.family, addr) not in found:
                found.append((socket.AddressFamily(node.family), addr))
        if not found:
            raise LookupFailed(f"{host}: no address")
        return found

    def _ended(self, key: _Key, tenant: Hashable | None, task: asyncio.Task[list[Address]]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if tenant is not None:
            self._free(tenant)
        if task.cancelled():  # only when the loop stops: nothing to keep
            return
        exc = task.exception()  # retrieved here: callers that left never will
        if len(self._kept) >= MAX_KEPT:
            now = self.loop.time()
            self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
            if len(self._kept) >= MAX_KEPT:
                self._kept.clear()
        if exc is None:
            self._kept[key] = (self.loop.time() + ANSWER_S, task.result())
        else:
            self._kept[key] = (self.loop.time() + FAILURE_S, str(exc))

    def _free(self, tenant: Hashable) -> None:
        self._turns[tenant].release()
        self._leave(tenant)

    def _leave(self, tenant: Hashable) -> None:
        left = self._users[tenant] - 1
        if left:
            self._users[tenant] = left
        else:  # no one holds or awaits a turn: forget the tenant
            del self._users[tenant]
            del self._turns[tenant]

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await self._resolver.close()


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Names] = weakref.WeakKeyDictionary()


def shared() -> Names:
    """The running loop's :class:`Names` (the system's nameservers)."""
    loop = asyncio.get_running_loop()
    names = _SHARED.get(loop)
    if names is None:
        names = _SHARED[loop] = Names()
    return names


async def addresses(host: str, port: int, tenant: Hashable | None = None) -> list[str]:
    """``host``'s addresses by :func:`shared` (:data:`meter.accounts.egress.Resolve`)."""
    return [addr for _, addr in await shared().lookup(host, tenant=tenant)]
