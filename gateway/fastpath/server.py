"""The fast traffic server of one process: listens, tracks connections, drains on stop.

It runs beside the traffic application's ``GatewayRunner`` (already set up: the
application's resources, the :class:`~gateway.proxy.Proxy` among them, exist), whose
``web.Server`` makes the aiohttp protocol a connection is handed to. Every
sweep (a quarter of the shortest timeout, at most a second) it closes connections that
sent no complete request within ``header_timeout_s`` (and aborts those whose client did
not take what was buffered for it within that long again: ClientConnection.timed_out),
ends the exchanges whose bot sent nothing for ``upstream_read_timeout_s``, and closes bot
connections idle too long.

Stopping (SIGTERM): stop accepting, close idle keep-alive connections at once and the
others after their current response, wait for that up to the grace; then answer the
messages still waiting for a bot connection (502, refunded; they never reach the bot),
give them ``SETTLE_S`` to do so, and abort what is left; handed-off connections are
aiohttp's and drained by its runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any

from aiohttp import web

from config import Settings
from gateway.appkeys import PROXY, TRAFFIC_STATS
from gateway.fastpath.connection import ClientConnection
from gateway.fastpath.dispatch import serve_message
from gateway.fastpath.flow import Flow
from gateway.fastpath.message import Message
from gateway.fastpath.pool import Pool
from gateway.fastpath.request import FAST_BODY
from gateway.logs import access_log_on
from gateway.tenant_share import Shares
from meter.accounts.egress import Policy

log = logging.getLogger(__name__)
SETTLE_S = 5.0  # after the grace: how long refused waiters get to refund and answer


class FastServer:
    """Serves the traffic port with :class:`ClientConnection` protocols."""

    def __init__(self, runner: web.AppRunner, settings: Settings) -> None:
        self.loop = asyncio.get_running_loop()
        self.proxy = runner.app[PROXY]
        self.stats = runner.app[TRAFFIC_STATS]
        self.pool = Pool(
            Policy.from_settings(settings),
            connect_timeout=settings.upstream_connect_timeout_s,
            per_bot=settings.upstream_connections_per_bot,
            total=settings.upstream_connections,
            shares=Shares(
                per_bot=settings.tenant_connections_per_bot,
                total=settings.tenant_connections,
                waited=self.proxy.metrics.tenant_share_waits.inc,
            ),
        )
        self.read_timeout = settings.upstream_read_timeout_s
        self.header_timeout = settings.header_timeout_s
        self.body_limit = min(FAST_BODY, settings.max_body_bytes)
        self.access_log = access_log_on(settings)
        self.connections: set[ClientConnection] = set()
        self.tasks: set[asyncio.Task[None] | Flow] = set()  # what stop() waits for
        self._runner = runner
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._date = ""
        self._date_at = -1

    # ------------------------------------------------------------ used per request

    def serve(self, conn: ClientConnection, msg: Message) -> None:
        self.stats.fast += 1
        flow = Flow(self.loop, serve_message(self, conn, msg), self.tasks.discard)
        if not flow.start():  # most messages that do not wait finish here
            self.tasks.add(flow)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def aiohttp_protocol(self) -> asyncio.Protocol:
        """A fresh aiohttp protocol of the traffic application, for a hand-off."""
        server = self._runner.server
        assert server is not None
        self.stats.handed_off += 1
        return server()

    def date(self) -> str:
        now = int(self.loop.time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(usegmt=True)
        return self._date

    # ------------------------------------------------------------ life cycle

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen; returns the port (chosen by the system when ``port`` is 0)."""
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_port=reuse_port, backlog=1024
        )
        self._sweeper = self.loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        # Timeouts are checked here, every quarter of the shortest (at most a second), so
        # one fires up to that much late; a timer per message cost more than its check.
        period = max(0.05, min(1.0, self.header_timeout / 4, self.read_timeout / 4))
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            limit = self.header_timeout
            for conn in list(self.connections):
                since = conn.head_since
                if since is not None and now - since > limit:
                    conn.timed_out(now)  # slow, silent or not reading: closed, then cut
                elif conn.exchange is not None:
                    conn.exchange.check_timeout(now)
            self.pool.sweep(now)

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_idle()
        await self._settle(grace, lambda: bool(self.connections or self.tasks))
        # Messages still waiting for a bot at its cap are answered 502 and refunded (their
        # clients still connected) rather than reset with their charge left to the sweeper.
        self.pool.close()
        await self._settle(SETTLE_S, lambda: bool(self.tasks))
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _settle(self, within: float, busy: Callable[[], bool]) -> None:
        deadline = self.loop.time() + within
        # Many protocols own this state; polled, and bounded.
        while busy() and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
