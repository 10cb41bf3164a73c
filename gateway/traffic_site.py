"""The traffic port of one process, served by the configured ``traffic_server``.

``aiohttp``: the traffic application on a ``web.TCPSite``. ``fast``: the fast path
(:mod:`gateway.fastpath`) in front of the same application, which serves what the fast
path hands it. Either way the caller builds and cleans up through this one object.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from config import Settings
from gateway.appkeys import HTTP
from gateway.bot_connector import BotConnector
from gateway.http_server import GatewayRunner

if TYPE_CHECKING:
    from gateway.fastpath.server import FastServer

REFUSE_AHEAD_S = 1.0  # how long before aiohttp's cancellation waiters are refused


class TrafficPort:
    """Set up the traffic application, listen, and stop with a drain."""

    def __init__(self, app: web.Application, settings: Settings, **runner_kw: object) -> None:
        self.settings = settings
        self.runner = GatewayRunner(app, settings, **runner_kw)
        self.port = 0
        self._fast: FastServer | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """:meth:`setup`, then :meth:`listen`."""
        await self.setup()
        return await self.listen(host, port, reuse_port=reuse_port)

    async def setup(self) -> None:
        """Start the traffic application (its resources: Redis, the proxy...)."""
        await self.runner.setup()

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: a free port); returns the port. Raises OSError when
        the port cannot be bound (the runner is cleaned up then)."""
        try:
            if self.settings.traffic_server == "fast":
                from gateway.fastpath.server import FastServer

                fast = FastServer(self.runner, self.settings)
                self.port = await fast.start(host, port, reuse_port=reuse_port)
                self._fast = fast
            else:
                site = web.TCPSite(self.runner, host, port, reuse_port=reuse_port, backlog=1024)
                await site.start()
                self.port = self.runner.addresses[0][1]
        except BaseException:
            await self.runner.cleanup()
            raise
        return self.port

    async def cleanup(self) -> None:
        """Stop accepting, let in-flight requests finish (``shutdown_grace_s``), close."""
        grace = self.settings.shutdown_grace_s
        if self._fast is not None:
            await self._fast.stop(grace)
            self._refuse_waiters()  # what it handed to aiohttp and still waits: as its own
            await self.runner.cleanup()
            return
        # aiohttp cancels the handlers still running when the grace ends. Messages still
        # waiting for a bot connection are refused a little before (refunded, answered
        # 502), as the fast path does at the grace's end: cancelled with the rest, one of
        # them could take the place a cancelled request frees and be sent, then reset.
        timers: list[asyncio.TimerHandle] = []

        def grace_starts() -> None:
            ahead = grace - min(REFUSE_AHEAD_S, grace / 2)
            timers.append(asyncio.get_running_loop().call_later(ahead, self._refuse_waiters))

        self.runner.on_grace = grace_starts
        try:
            await self.runner.cleanup()
        finally:
            for timer in timers:
                timer.cancel()

    def _refuse_waiters(self) -> None:
        session = self.runner.app.get(HTTP)  # none: its start failed
        if session is not None and isinstance(session.connector, BotConnector):
            session.connector.refuse_waiters()
