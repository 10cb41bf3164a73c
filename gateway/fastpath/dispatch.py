"""From a parsed request to its forward: :func:`serve_message` (see :mod:`.exchange`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from yarl import URL

from gateway import problems
from gateway import traffic_rules as rules
from gateway.counting import outcome_of
from gateway.egress import UpstreamForbidden
from gateway.fastpath.connection import ClientConnection
from gateway.fastpath.exchange import Exchange
from gateway.fastpath.head import forward_bytes
from gateway.fastpath.message import Message
from gateway.fastpath.pool import ClientGone, expire
from gateway.fastpath.serving import FastServer
from gateway.fastpath.upstream import ConnectFailed, ConnectTimeout, UpstreamConnection
from gateway.fastpath.wire import text_headers
from gateway.inbound import Inbound
from gateway.problems import Problem, problem_of
from gateway.tenant_share import OnWait, Wait
from gateway.unbilled import Held

log = logging.getLogger(__name__)


async def serve_message(server: FastServer, conn: ClientConnection, msg: Message) -> None:
    """Decide ``msg`` and forward it (see the module)."""
    proxy = server.proxy
    channel, app_id = msg.channel, msg.app_id
    ex = Exchange(server, conn, msg, proxy.channels.get(channel).label)
    proxy.metrics.in_flight.inc()
    try:
        body, read_body = msg.body, msg.read_body  # a method: no closure per message
        inbound = Inbound(
            msg.method,
            msg.target,
            text_headers(msg.headers),
            remote=conn.peer,
            scheme="http",
            content_length=msg.content_length,
            body_exists=bool(msg.content_length),
            tail=msg.target.partition("?")[0][len(channel) + len(app_id) + 9 :],
        )
        to = await rules.route(proxy, inbound, channel, app_id, read_body)
        url = to.url
        if url.scheme != "http" or url.raw_user or to.verified.handshake_challenge is not None:
            ex.done = True  # aiohttp answers it: https bots, the Meta handshake
            proxy.metrics.in_flight.dec()
            server.stats.fast -= 1
            conn.hand_off_message(msg)
            return
        admitted = await rules.admit(proxy, inbound, to, channel, app_id, read_body)
        admission = ex.admission = admitted.admission
        if admitted.unbilled is not None:
            ex.held = Held(admitted.unbilled)
        out_body = admitted.body if admitted.have_body else (body or None)
        data = forward_bytes(msg, inbound.headers, conn.peer, url, to.verified, admitted, out_body)
        t0 = time.perf_counter()
        upstream = await _upstream(server, ex, url, t0)
        if upstream is None:
            return
        ex.outcome = "unmetered" if admission is None else "admitted"
        ex.start(upstream, data, t0, bool(out_body))
        proxy.meter.forwarded(admission)  # handed to the socket
    except Exception as exc:
        ex.outcome = outcome_of(exc)
        problem = problem_of(exc)
        if problem is None:
            log.error("error handling a request", exc_info=exc)
            problem = Problem(500, "internal_error", "Internal Server Error")
        if ex.upstream is None and not ex.done:
            ex.respond_problem(problem)


async def _upstream(
    server: FastServer, ex: Exchange, url: URL, t0: float
) -> UpstreamConnection | None:
    """A connection to the bot for ``ex``; None when its client went away meanwhile
    (finished here). Failures are refunded (``connect``) and raised as their problem."""
    proxy, admission = server.proxy, ex.admission
    host, port = url.raw_host or "", url.port or 80
    try:
        server.pool.verdicts.check(url)
        upstream = await _connection(server, ex, host, port)
        if ex.conn.transport is None:  # gone while connecting, or as its wait ended
            server.pool.release(upstream)
            raise ClientGone
        return upstream
    except ClientGone:  # gone before its message was sent: refunded, never sent
        proxy.metrics.client_disconnects.inc()
        if admission is not None:
            await proxy.meter.failed(admission, "connect")
        ex.code, ex.outcome = "client_gone", "client_error"
        ex.finish(False)
        return None
    except UpstreamForbidden as exc:
        log.warning("upstream %s refused by the egress policy: %s", host, exc.reason)
        if admission is not None:
            await proxy.meter.failed(admission, "connect")
        raise rules.forbidden() from None
    except (ConnectTimeout, ConnectFailed) as exc:
        proxy.metrics.upstream_children["connect"].observe(time.perf_counter() - t0)
        if admission is not None:
            await proxy.meter.failed(admission, "connect")
        if isinstance(exc, ConnectTimeout):
            raise problems.bot_timeout() from None
        raise problems.bot_unavailable() from None


async def _connection(server: FastServer, ex: Exchange, host: str, port: int) -> UpstreamConnection:
    """A connection for ``ex`` within its tenant's share (:mod:`gateway.tenant_share`):
    first a place of the share, then the pool's, both by one deadline; the connection
    holds the share's place until released or ended."""
    pool = server.pool
    deadline = pool.deadline()
    tenant = server.proxy.upstreams.tenant(ex.msg.app_id)
    if tenant is None:  # never: routed messages have a well-formed app id
        return await pool.acquire(host, port, ex, deadline)

    key = (host, port)
    ticket = pool.shares.take(tenant, key)  # the common case: no wait, no coroutine
    if ticket is None:
        ticket = await pool.shares.enter(tenant, key, _waiting(server, ex, deadline))
    try:
        upstream = pool.idle(host, port) or await pool.acquire(host, port, ex, deadline, tenant)
    except BaseException:
        ticket.free()
        raise
    upstream.ticket = ticket
    return upstream


def _waiting(server: FastServer, ex: Exchange, deadline: float) -> OnWait:
    """What a wait for a place of the share does: it ends at ``deadline``, or when
    ``ex``'s client leaves."""

    def on_wait(wait: Wait) -> Callable[[], None]:
        timer = server.loop.call_at(deadline, expire, wait)
        ex.waiting(wait)  # its client leaving ends the wait

        def undo() -> None:
            timer.cancel()
            ex.waiting(None)

        return undo

    return on_wait
