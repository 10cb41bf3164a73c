"""The fast path's bot connection pool (gateway/fastpath/pool.py) against real bot
sockets that count what they accept: the cap per bot and in all, FIFO hand-over, places
freed by closed connections, waiters that give up (timed out, client gone, cancelled in
the very pass they were woken), idle connections bounded, no place ever leaked, and a
connection released reading (a real bot answers on it)."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from gateway.fastpath.pool import IDLE_S, ClientGone, Pool, Wait
from gateway.fastpath.upstream import ConnectFailed, ConnectTimeout, UpstreamConnection
from gateway.unread import transport_unread
from meter.accounts.egress import Policy
from tests.support.bot import eventually, running_bot
from tests.support.settings import HOST, make_settings

DEADLINE_S = 30.0


class Sockets:
    """A listening socket that accepts, counts, and reads until the peer closes."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.close()


class Answer:
    """An upstream connection's receiver, as the exchange is one: keeps the bot's answer."""

    def __init__(self) -> None:
        self.status = 0
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def on_body(self, chunk: bytes) -> None:
        pass

    def on_complete(self, keep_alive: bool) -> None:
        self.done.set_result(keep_alive)

    def on_lost(self) -> None:
        self.done.set_exception(ConnectionError("lost"))


class Message:
    """A waiter as the exchange is one: it sees its wait, and can leave it. With
    ``cancel_when_woken`` its task is cancelled by the wake-up itself, before the task
    runs again (the callback is the wait's first)."""

    def __init__(self, *, cancel_when_woken: bool = False) -> None:
        self.wait: Wait | None = None
        self.waited = False
        self.task: asyncio.Task[UpstreamConnection] | None = None
        self.cancel_when_woken = cancel_when_woken

    def waiting(self, wait: Wait | None) -> None:
        self.wait = wait
        self.waited = self.waited or wait is not None
        if wait is not None and self.cancel_when_woken:
            wait.add_done_callback(self._woken)

    def _woken(self, wait: Wait) -> None:
        if not wait.cancelled() and wait.exception() is None and self.task is not None:
            self.task.cancel()

    def leave(self) -> None:
        assert self.wait is not None
        self.wait.set_exception(ClientGone())


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    s = Sockets()
    server = await asyncio.start_server(s.serve, HOST, 0)
    s.port = server.sockets[0].getsockname()[1]
    async with server:
        yield s


@pytest.fixture
async def bots() -> AsyncIterator[list[Sockets]]:
    """Six bots: listening sockets at six ports."""
    async with contextlib.AsyncExitStack() as stack:
        found = []
        for _ in range(6):
            s = Sockets()
            server = await stack.enter_async_context(await asyncio.start_server(s.serve, HOST, 0))
            s.port = server.sockets[0].getsockname()[1]
            found.append(s)
        yield found


@contextlib.asynccontextmanager
async def pool(
    per_bot: int, connect_timeout: float = 600.0, total: int = 1024
) -> AsyncIterator[Pool]:
    policy = Policy.from_settings(make_settings())
    p = Pool(policy, connect_timeout=connect_timeout, per_bot=per_bot, total=total)
    try:
        yield p
    finally:
        p.close()


async def waiting(
    p: Pool, port: int, msg: Message | None = None
) -> tuple[Message, asyncio.Task[UpstreamConnection]]:
    """A message that acquires and is seen queued."""
    msg = msg or Message()
    task = msg.task = asyncio.create_task(p.acquire(HOST, port, msg))
    assert await eventually(lambda: msg.waited or task.done())
    assert not task.done()
    return msg, task


async def full(
    p: Pool, port: int, msg: Message | None = None
) -> tuple[UpstreamConnection, asyncio.Task[UpstreamConnection]]:
    """The bot's one place taken (a connection), and a message queued for it."""
    conn = await p.acquire(HOST, port, Message())
    _, task = await waiting(p, port, msg)
    return conn, task


async def got(task: asyncio.Task[UpstreamConnection]) -> UpstreamConnection:
    """What a queued message got; a generous deadline turns a lost wake-up into a failure."""
    return await asyncio.wait_for(task, DEADLINE_S)


async def settled(p: Pool, sockets: Sockets) -> bool:
    """Every connection closed, and the pool keeps nothing for the bot."""
    return await eventually(lambda: sockets.open == 0 and not p._bots)


async def test_the_cap_holds_and_waiters_get_released_connections_in_order(
    sockets: Sockets,
) -> None:
    async with pool(per_bot=2) as p:
        held = [await p.acquire(HOST, sockets.port, Message()) for _ in range(2)]
        queued = [await waiting(p, sockets.port) for _ in range(3)]
        assert await eventually(lambda: sockets.accepted == 2)
        for conn in held:
            p.release(conn)
        first, second = await got(queued[0][1]), await got(queued[1][1])
        assert [first, second] == held  # handed over as they were, in order
        assert not queued[2][1].done()
        p.release(first)
        assert await got(queued[2][1]) is first
        assert sockets.accepted == 2
        for conn in (first, second):
            conn.close()
        assert await settled(p, sockets)


async def test_a_closed_connection_frees_its_place_for_the_next(sockets: Sockets) -> None:
    async with pool(per_bot=1) as p:
        conn, task = await full(p, sockets.port)
        conn.close()  # not released: ended
        fresh = await got(task)
        assert fresh is not conn
        assert sockets.accepted == 2
        fresh.close()
        assert await settled(p, sockets)


async def test_waiters_that_leave_never_get_a_connection(sockets: Sockets) -> None:
    async with pool(per_bot=1) as p:
        conn = await p.acquire(HOST, sockets.port, Message())
        gone = [await waiting(p, sockets.port) for _ in range(40)]
        _, last = await waiting(p, sockets.port)
        for msg, _ in gone:
            msg.leave()
        for _, task in gone:
            with pytest.raises(ClientGone):
                await got(task)
        assert len(p._bots[(HOST, sockets.port)].waiters) < 41  # dropped, not kept
        p.release(conn)
        assert await got(last) is conn
        assert sockets.accepted == 1
        conn.close()
        assert await settled(p, sockets)


async def test_a_waiter_past_the_connect_timeout_leaves_the_queue(sockets: Sockets) -> None:
    # Only the waiter's deadline is short (the exchange passes each its own, the pool's
    # connect timeout from now): the first message's connect has the pool's 600 s (1 s
    # was passed on a busy machine), and the waiter is seen queued, its deadline passed
    # by then or not.
    async with pool(per_bot=1) as p:
        conn = await p.acquire(HOST, sockets.port, Message())
        msg = Message()
        deadline = p.loop.time() + 0.2
        task = msg.task = asyncio.create_task(p.acquire(HOST, sockets.port, msg, deadline))
        assert await eventually(lambda: msg.waited)
        with pytest.raises(ConnectTimeout):
            await got(task)
        p.release(conn)  # no one waits: idle, and taken by the next message
        assert await p.acquire(HOST, sockets.port, Message()) is conn
        conn.close()
        assert await settled(p, sockets)


@pytest.mark.parametrize("ended", [False, True], ids=["released", "closed"])
async def test_a_waiter_cancelled_as_it_is_woken_passes_what_it_got_on(
    sockets: Sockets, ended: bool
) -> None:
    async with pool(per_bot=1) as p:
        conn, woken = await full(p, sockets.port, Message(cancel_when_woken=True))
        _, next_ = await waiting(p, sockets.port)
        # ``woken`` is handed the connection (released) or its place (closed), and is
        # cancelled before it runs again: the next waiter gets it instead.
        if ended:
            conn.close()
        else:
            p.release(conn)
        with pytest.raises(asyncio.CancelledError):
            await got(woken)
        fresh = await got(next_)
        assert (fresh is conn, sockets.accepted) == (not ended, 1 + ended)
        fresh.close()
        assert await settled(p, sockets)


async def test_closing_the_pool_refuses_its_waiters_and_newcomers(sockets: Sockets) -> None:
    async with pool(per_bot=1) as p:
        conn, task = await full(p, sockets.port)
        p.close()
        with pytest.raises(ConnectFailed, match="stopping"):
            await got(task)
        with pytest.raises(ConnectFailed, match="stopping"):
            await p.acquire(HOST, sockets.port, Message())  # nor is anyone new served
        conn.close()
        assert await eventually(lambda: sockets.open == 0)


# ------------------------------------------------------------------ the total


def open_at(bots: list[Sockets]) -> list[int]:
    return [b.open for b in bots]


async def test_the_total_holds_across_bots(bots: list[Sockets]) -> None:
    s1, s2, s3 = bots[:3]
    async with pool(per_bot=2, total=3) as p:
        c1, c2 = [await p.acquire(HOST, s1.port, Message()) for _ in range(2)]
        c3 = await p.acquire(HOST, s2.port, Message())
        _, task = await waiting(p, s3.port)  # its bot under its cap, the process full
        assert (p.count, s3.accepted) == (3, 0)
        c1.close()
        fresh = await got(task)
        assert fresh.key == (HOST, s3.port)
        assert await eventually(lambda: open_at(bots[:3]) == [1, 1, 1])
        for conn in (c2, c3, fresh):
            conn.close()
        assert await eventually(lambda: not p._bots and p.count == 0)


async def test_a_bot_at_its_cap_blocks_no_one_behind_it(bots: list[Sockets]) -> None:
    s1, s2, s3 = bots[:3]
    async with pool(per_bot=1, total=2) as p:
        c1 = await p.acquire(HOST, s1.port, Message())
        c2 = await p.acquire(HOST, s2.port, Message())
        _, first = await waiting(p, s1.port)  # at its bot's cap
        _, second = await waiting(p, s3.port)  # at the process's
        c2.close()  # a place of the process: s1 is still at its cap, s3 is not
        fresh = await got(second)
        assert fresh.key == (HOST, s3.port)
        assert not first.done()
        p.release(c1)
        assert await got(first) is c1
        for conn in (c1, fresh):
            conn.close()
        assert await eventually(lambda: not p._bots and open_at(bots) == [0] * 6)


async def test_a_released_connection_goes_to_an_older_waiter_of_another_bot(
    bots: list[Sockets],
) -> None:
    # A tenant whose bot is always at its cap, with keep-alive, would otherwise hand its
    # connections to its own waiters forever while another bot's message waits.
    s1, s2 = bots[:2]
    async with pool(per_bot=2, total=2) as p:
        c1, c2 = [await p.acquire(HOST, s1.port, Message()) for _ in range(2)]
        _, other = await waiting(p, s2.port)  # waits for a place of the process
        _, own = await waiting(p, s1.port)  # then one of s1's, which is at its cap
        p.release(c1)  # s1's own waiter came later: closed, its place to s2's
        fresh = await got(other)
        assert fresh.key == (HOST, s2.port)
        assert await eventually(lambda: open_at(bots[:2]) == [1, 1])
        assert not own.done()
        p.release(c2)
        assert await got(own) is c2
        assert s1.accepted == 2
        for conn in (c2, fresh):
            conn.close()
        assert await eventually(lambda: not p._bots and p.count == 0)


async def test_idle_connections_are_bounded_in_all(bots: list[Sockets]) -> None:
    async with pool(per_bot=3, total=3) as p:
        for b in bots:  # one connection to each bot, then kept idle
            p.release(await p.acquire(HOST, b.port, Message()))
        # Each new one past the total closed the oldest idle one (another bot's).
        assert p.count == 3
        assert await eventually(lambda: open_at(bots) == [0, 0, 0, 1, 1, 1])
        assert [b.accepted for b in bots] == [1] * 6
        last = await p.acquire(HOST, bots[-1].port, Message())  # still idle: reused
        assert bots[-1].accepted == 1
        last.close()
        p.sweep(p.loop.time() + IDLE_S + 1)  # the rest idled too long
        assert await eventually(lambda: not p._bots and p.count == 0 and open_at(bots) == [0] * 6)


async def test_a_waiter_for_the_total_that_leaves_never_gets_a_place(bots: list[Sockets]) -> None:
    s1, s2, s3 = bots[:3]
    async with pool(per_bot=1, total=1) as p:
        conn = await p.acquire(HOST, s1.port, Message())
        gone, left = await waiting(p, s2.port)
        _, task = await waiting(p, s3.port)
        gone.leave()
        with pytest.raises(ClientGone):
            await got(left)
        conn.close()
        fresh = await got(task)
        assert (fresh.key, s2.accepted) == ((HOST, s3.port), 0)
        _, refused = await waiting(p, s2.port)
        p.close()
        with pytest.raises(ConnectFailed, match="stopping"):
            await got(refused)
        fresh.close()
        assert await eventually(lambda: not p._bots and p.count == 0)


async def test_a_connection_paused_as_its_answer_ended_is_released_reading() -> None:
    """The exchange pauses its bot connection while its client does not read; the answer
    may end meanwhile (in the read that paused it): released, the connection reads again,
    or the next message on it, of any app, would get no answer."""
    async with running_bot() as bot, pool(per_bot=1) as p:
        port = int(bot.url.rsplit(":", 1)[1])
        conn = await p.acquire(HOST, port, Message())
        first = Answer()
        conn.send(first, b"GET /a HTTP/1.1\r\nHost: bot\r\n\r\n")
        assert await asyncio.wait_for(first.done, DEADLINE_S)  # keep-alive
        conn.pause()
        p.release(conn)
        again = await p.acquire(HOST, port, Message())
        assert again is conn
        assert again.transport is not None
        assert again.transport.is_reading()
        second = Answer()
        again.send(second, b"GET /b HTTP/1.1\r\nHost: bot\r\n\r\n")
        assert await asyncio.wait_for(second.done, DEADLINE_S)
        assert (second.status, [c.path_qs for c in bot.calls]) == (200, ["/a", "/b"])
        again.close()


class ClosingBot:
    """A bot in a thread of its own (blocking sockets, so it acts while the test holds
    the loop): it answers one request kept alive, then closes the connection when told,
    as a bot whose keep-alive timeout is shorter than the pool's does."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.close_now = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in conn.recv(4096):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self.close_now.wait(DEADLINE_S)

    def stop(self) -> None:
        self.close_now.set()
        self.thread.join(DEADLINE_S)
        self.listener.close()


async def test_a_connection_its_bot_closed_is_not_handed_out_while_its_close_waits() -> None:
    """The bot closes a kept connection and its close reaches the socket, but the loop
    has not read it yet (busy: here, held by the test): the pool hands the connection to
    no message (sent on it, the message would fail: 502) and says so on the aiohttp side
    too (gateway.unread); the next message opens a fresh connection. ``FIONREAD``, asked
    before, counts no close: the dead connection was handed out."""
    bot = ClosingBot()
    try:
        async with pool(per_bot=2) as p:
            conn = await p.acquire(HOST, bot.port, Message())
            answer = Answer()
            conn.send(answer, b"GET /a HTTP/1.1\r\nHost: bot\r\n\r\n")
            assert await asyncio.wait_for(answer.done, DEADLINE_S)  # kept alive
            p.release(conn)
            assert conn.transport is not None
            fd = conn.transport.get_extra_info("socket").fileno()
            bot.close_now.set()
            # Blocking: the loop does not run, so the close waits unread in the socket.
            readable, _, _ = select.select([fd], [], [], DEADLINE_S)
            assert readable == [fd]
            assert transport_unread(conn.transport)
            assert p.idle(HOST, bot.port) is None
            assert conn.closed or conn.transport is None or conn.transport.is_closing()
    finally:
        bot.stop()
