"""What an :class:`~gateway.fastpath.exchange.Exchange` needs of its server."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway.fastpath.pool import Pool
from gateway.proxy import Proxy
from gateway.traffic_stats import TrafficStats


class FastServer(Protocol):
    """What an exchange needs of its server (:class:`gateway.fastpath.server.FastServer`)."""

    loop: asyncio.AbstractEventLoop
    proxy: Proxy
    pool: Pool
    stats: TrafficStats
    read_timeout: float
    access_log: bool

    def date(self) -> str: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
