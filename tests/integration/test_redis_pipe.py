"""meter.redis_layer.pipe against a real redis-server: order, errors, lost connections,
timeouts, AUTH and SELECT, and the Admitter's use of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from meter.admission.decision import Decision
from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient, connect
from meter.redis_layer.pipe import RedisPipe, encode
from tests.support.metering import admission
from tests.support.servers import free_port, start_redis
from tests.support.servers.redis_server import RedisServer

Reply = tuple[Any, bool]
USD = 1_000_000


class Collect:
    """Replies in the order the pipe delivered them."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self._changed = asyncio.Event()

    def __call__(self, reply: Any, sent: bool) -> None:
        self.replies.append((reply, sent))
        self._changed.set()

    async def wait(self, n: int) -> list[Reply]:
        while len(self.replies) < n:
            self._changed.clear()
            await self._changed.wait()
        return self.replies


def call_all(pipe: RedisPipe, commands: Sequence[Sequence[EncodableT]]) -> Collect:
    got = Collect()
    for c in commands:
        pipe.call(c, got)
    return got


@pytest.fixture
async def single(redis_url: str) -> AsyncIterator[RedisClient]:
    client = connect(redis_url)
    yield client
    await client.aclose()


def test_encode_is_resp_bulk_strings() -> None:
    assert (
        encode(["SET", b"k", 12, 1.5]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )


async def test_replies_come_back_in_order_over_one_connection(single: RedisClient) -> None:
    pipe = RedisPipe.for_client(single, timeout=10)
    assert pipe is not None
    try:
        await single.delete("pipe:n")
        got = await call_all(pipe, [["INCR", "pipe:n"]] * 500 + [["CLIENT", "ID"]] * 2).wait(502)
        assert [r for r, _ in got[:500]] == list(range(1, 501))
        assert all(sent for _, sent in got)
        assert got[500][0] == got[501][0]  # one connection for all of them
    finally:
        pipe.close()


async def test_an_error_reply_is_that_call_s_alone(single: RedisClient) -> None:
    pipe = RedisPipe.for_client(single, timeout=10)
    assert pipe is not None
    try:
        await single.set("pipe:s", "text")
        commands = [["GET", "pipe:s"], ["INCR", "pipe:s"], ["EVALSHA", "0" * 40, 0]]
        got = await call_all(pipe, [*commands, ["GET", "pipe:s"]]).wait(4)
        assert got[0] == (b"text", True)
        assert got[3] == (b"text", True)
        assert isinstance(got[1][0], ResponseError)
        assert str(got[2][0]).startswith("NOSCRIPT")
    finally:
        pipe.close()


async def test_a_killed_connection_fails_what_it_owes_and_the_next_call_reconnects(
    single: RedisClient,
) -> None:
    pipe = RedisPipe.for_client(single, timeout=10)
    assert pipe is not None
    try:
        ((first, _),) = await call_all(pipe, [["CLIENT", "ID"]]).wait(1)
        # BLPOP holds the connection (whether it has reached the server yet or not), so
        # the calls behind it are still owed when the connection dies.
        owed = call_all(pipe, [["BLPOP", "pipe:never", 0], ["PING"], ["PING"]])
        await single.client_kill_filter(_id=first)
        got = await owed.wait(3)
        assert all(isinstance(r, RedisConnectionError) and sent for r, sent in got)
        ((second, _),) = await call_all(pipe, [["CLIENT", "ID"]]).wait(1)
        assert second != first
    finally:
        pipe.close()


async def test_nothing_listening_fails_the_calls_as_never_sent() -> None:
    pipe = RedisPipe(("127.0.0.1", free_port()), [], timeout=10, connect_timeout=10)
    got = await call_all(pipe, [["PING"], ["PING"]]).wait(2)
    assert all(isinstance(r, RedisConnectionError) and not sent for r, sent in got)
    pipe.close()


async def test_a_server_that_never_answers_times_out_and_the_connection_is_dropped() -> None:
    conns: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        await reader.read()  # reads to the end, answers nothing
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(("127.0.0.1", port), [], timeout=0.2, connect_timeout=10)
    try:
        got = await call_all(pipe, [["PING"], ["PING"]]).wait(2)
        assert all(isinstance(r, RedisTimeoutError) and sent for r, sent in got)
        got = await call_all(pipe, [["PING"]]).wait(1)  # a new connection, timed out again
        assert isinstance(got[0][0], RedisTimeoutError)
        assert len(conns) == 2
    finally:
        pipe.close()
        server.close()
        await server.wait_closed()


async def test_a_closed_pipe_refuses_calls() -> None:
    pipe = RedisPipe(("127.0.0.1", free_port()), [], timeout=10, connect_timeout=10)
    pipe.close()
    got = await call_all(pipe, [["PING"]]).wait(1)
    assert got == [(got[0][0], False)]
    assert isinstance(got[0][0], RedisConnectionError)


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = start_redis(tmp_path_factory.mktemp("guarded"))
    import redis

    with redis.Redis(host="127.0.0.1", port=server.port) as admin:
        admin.config_set("requirepass", "s3cret")
    yield server
    server.stop()


async def test_password_and_database_from_the_url(guarded_redis: RedisServer) -> None:
    url = f"redis://:s3cret@127.0.0.1:{guarded_redis.port}/3"
    client = connect(url)
    pipe = RedisPipe.for_client(client, timeout=10)
    assert pipe is not None
    try:
        got = await call_all(pipe, [["SET", "pipe:db", "three"]]).wait(1)
        assert got[0][0] == b"OK"
        assert await client.get("pipe:db") == b"three"  # redis-py on db 3 sees it
        other = connect(f"redis://:s3cret@127.0.0.1:{guarded_redis.port}/0")
        assert await other.get("pipe:db") is None
        await other.aclose()
    finally:
        pipe.close()
        await client.aclose()


async def test_a_wrong_password_fails_every_call_instead_of_hanging(
    guarded_redis: RedisServer,
) -> None:
    client = connect(f"redis://:wrong@127.0.0.1:{guarded_redis.port}/0")
    pipe = RedisPipe.for_client(client, timeout=10)
    assert pipe is not None
    try:
        got = await call_all(pipe, [["PING"], ["PING"]]).wait(2)
        assert all(isinstance(r, RedisConnectionError) for r, _ in got)
        assert "setup" in str(got[0][0])
    finally:
        pipe.close()
        await client.aclose()


async def test_tls_and_cluster_clients_keep_redis_py() -> None:
    tls = connect("rediss://127.0.0.1:6390/0")
    cluster = connect("redis+cluster://127.0.0.1:7000")
    assert RedisPipe.for_client(tls, timeout=1) is None
    assert RedisPipe.for_client(cluster, timeout=1) is None
    await tls.aclose()
    await cluster.aclose()


async def test_a_server_that_hangs_up_at_once_fails_the_calls_as_never_sent() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR max number of clients reached\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = RedisPipe(("127.0.0.1", port), [], timeout=10, connect_timeout=10)
    try:
        for _ in range(3):  # each call gets its answer; none is left waiting
            got = await call_all(pipe, [["PING"], ["PING"]]).wait(2)
            assert all(isinstance(r, RedisConnectionError) for r, _ in got)
    finally:
        pipe.close()
        server.close()
        await server.wait_closed()


async def test_closing_while_connecting_fails_the_waiting_calls(single: RedisClient) -> None:
    pipe = RedisPipe.for_client(single, timeout=10)
    assert pipe is not None
    got = call_all(pipe, [["PING"], ["PING"]])  # the connection is being opened...
    pipe.close()  # ...when the pipe closes
    assert [sent for _, sent in await got.wait(2)] == [False, False]
    assert all(isinstance(r, RedisConnectionError) for r, _ in got.replies)


class _ClosedTransport:
    """A transport closed before ``connection_lost`` ran: uvloop's ``write`` then raises
    RuntimeError (asyncio's drops the data)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    def abort(self) -> None:
        self._real.abort()


async def test_a_write_that_raises_fails_its_calls_as_never_sent_and_reconnects(
    single: RedisClient,
) -> None:
    pipe = RedisPipe.for_client(single, timeout=10)
    assert pipe is not None
    try:
        ((first, _),) = await call_all(pipe, [["CLIENT", "ID"]]).wait(1)
        conn = pipe._conn
        assert conn is not None
        assert conn.transport is not None
        conn.transport = _ClosedTransport(conn.transport)  # type: ignore[assignment]
        (failed, sent), (second, _) = await call_all(pipe, [["PING"], ["CLIENT", "ID"]]).wait(2)
        assert isinstance(failed, RedisConnectionError)
        assert not sent
        assert second != first  # the next call went over a new connection
    finally:
        pipe.close()


async def test_an_admission_whose_write_raises_is_answered_and_frees_its_slot(
    single: RedisClient,
) -> None:
    """The write raising escaped the Admitter's dispatch: its waiters were never answered
    (a request hung until its client gave up) and its in-flight slot was never returned."""
    _, _, w, adm = await admission(single, free=10 * USD)
    assert (await adm.admit(w.apps[0], "web", "warm")).admitted  # the pipe is connected
    conn = adm._calls._pipe._conn  # type: ignore[union-attr]
    assert conn is not None
    assert conn.transport is not None
    conn.transport = _ClosedTransport(conn.transport)  # type: ignore[assignment]

    async def one(user: str) -> Decision | MeteringUnavailable:
        try:
            return await adm.admit(w.apps[0], "web", user)
        except MeteringUnavailable as exc:
            return exc

    # A hang guard, not a speed check: unanswered, the calls would wait forever.
    outs = await asyncio.wait_for(asyncio.gather(*(one(f"u{i}") for i in range(5))), 60)
    assert all(isinstance(o, MeteringUnavailable) and not o.ambiguous for o in outs)
    assert adm._inflight == 0
    assert (await adm.admit(w.apps[0], "web", "after")).admitted  # a new connection


async def test_a_call_made_while_a_failed_connect_answers_is_answered_too() -> None:
    """A failed connect answers its calls; a call made from one of those answers (the
    Admitter dispatches its next batch there) waited, unsent, for a connection nobody was
    opening, until some later call opened one (30 s of a request after a Redis kill)."""
    pipe = RedisPipe(("127.0.0.1", free_port()), [], timeout=10, connect_timeout=10)
    got = Collect()

    def first(reply: Any, sent: bool) -> None:
        got(reply, sent)
        pipe.call(["PING"], got)  # made from the first call's answer

    try:
        pipe.call(["PING"], first)
        replies = await asyncio.wait_for(got.wait(2), 60)  # a hang guard, not a speed check
        assert [(type(r), sent) for r, sent in replies] == [(RedisConnectionError, False)] * 2
    finally:
        pipe.close()
