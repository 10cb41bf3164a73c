"""Opening a connection to a bot under the egress policy, by a deadline.

IP literals are checked as aiohttp's client middleware checks them (by the caller,
:attr:`gateway.fastpath.pool.Pool.verdicts`); host names are resolved by
:class:`~gateway.egress.GuardedResolver` at each connect, so a name that later points
at a forbidden address is refused then.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from gateway.egress import GuardedResolver
from gateway.fastpath.upstream import ConnectFailed, ConnectTimeout, UpstreamConnection
from meter.accounts.addresses import parse_ip


async def dial(
    loop: asyncio.AbstractEventLoop,
    resolver: GuardedResolver,
    key: tuple[str, int],
    deadline: float,
    protocol: Callable[[], UpstreamConnection],
    tenant: str | None = None,
) -> UpstreamConnection:
    """A new connection to ``key``'s first address that accepts before ``deadline``;
    :class:`ConnectTimeout` or :class:`ConnectFailed` (the last address's) when none.
    The host name is looked up within ``tenant``'s share of lookups (coalesced and
    briefly remembered: :mod:`meter.accounts.names`)."""
    host, port = key
    if parse_ip(host) is not None:
        addresses = [host]
    else:
        try:
            async with asyncio.timeout_at(deadline):
                found = await resolver.lookup(host, port, socket.AF_UNSPEC, tenant)
        except TimeoutError:
            raise ConnectTimeout(host) from None
        except OSError as exc:  # no such name, no answer: the bot cannot be reached
            raise ConnectFailed(f"{host}: {exc}") from None
        addresses = [r["host"] for r in found]
    last: Exception = ConnectFailed(host)
    for address in addresses:
        left = deadline - loop.time()
        if left <= 0:
            raise ConnectTimeout(host)
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(protocol, address, port), left)
        except TimeoutError:
            last = ConnectTimeout(host)
            continue
        except OSError as exc:
            last = ConnectFailed(f"{host}: {exc}")
            continue
        if conn.closed:  # lost before it was ours: never counted
            last = ConnectFailed(f"{host}: closed at once")
            continue
        return conn
    raise last
