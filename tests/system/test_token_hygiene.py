"""A bearer token in a malformed ``Authorization`` header never reaches a log or a response.

Malformed headers, each carrying a recognisable secret, are sent over raw sockets: to an
in-process admin server (the production runner, every log record captured at DEBUG) and
to ``creditgate serve`` as a subprocess (its stderr log, admin and traffic ports). The
secret must appear in no response and no log line, and every answer is problem+json.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.http_server import GatewayRunner
from meter.redis_layer.client import connect
from meter.store import open_store
from tests.support.serving import creditgate_serve, tail
from tests.support.settings import make_settings

SECRET = b"SECRETsecret0123456789TOKENx"

HEADERS: list[bytes] = [
    b"Authorization: Bearer " + SECRET + b" extra",
    b"Authorization: " + SECRET,
    b"Authorization: Basic " + SECRET,
    b"Authorization: Bearer\t" + SECRET,
    b"Authorization: Bearer " + SECRET + b"\x01",
    b"Authorization: Bearer " + SECRET + b"\x00",
    b"Authorization: Bearer " + SECRET + b"\x7f",
    b"Authorization: Bearer " + SECRET + b"\xff\xfe",
    b"Authorization: Bearer \xc3" + SECRET,
    b"Authorization: Bearer " + SECRET * 30,  # over the token limit
    b"Authorization: Bearer " + SECRET * 400,  # over the header line limit
    b"Authorization : Bearer " + SECRET,  # not a header
    b"Authorization: Bearer " + SECRET + b"\r\n folded",
    b"Authorization: Bearer " + SECRET + b"\r\nAuthorization: Bearer " + SECRET + b"2",
    b"Authorization: Bearer " + SECRET + b"\n",
]


async def raw_call(port: int, header: bytes, path: bytes = b"/v1/upgrade-requests") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # One write: a server that refuses the head at the bad header answers and closes;
        # a second write arriving after that close would make it reset the connection,
        # and the reset can reach the client before it has read the answer.
        end = b"\r\nConnection: close\r\n\r\n"
        writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + header + end)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()


def check_answer(header: bytes, answer: bytes) -> None:
    assert SECRET not in answer, (header, answer)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert status in (400, 401, 404, 431), (header, answer)
    assert b"application/problem+json" in head, (header, answer)
    assert orjson.loads(body)["status"] == status


@asynccontextmanager
async def quiet_admin(store_url: str, redis_url: str) -> AsyncIterator[int]:
    """The admin application behind the production runner on a free loopback port."""
    settings = make_settings(redis_url, store_url=store_url, operator=True)
    store = open_store(store_url)
    await store.migrate()
    redis = connect(redis_url)
    gw = create_app(settings, redis=redis, store=store)
    runner = GatewayRunner(gw.admin, settings)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()
        await redis.aclose()
        await store.close()


async def test_no_log_record_and_no_answer_carries_the_token(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with quiet_admin(f"sqlite:///{tmp_path}/s.db", redis_url) as port:
        for header in HEADERS:
            check_answer(header, await raw_call(port, header))
    formatter = logging.Formatter()
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += formatter.formatException(record.exc_info)
        assert SECRET.decode() not in text, (record.levelname, record.name, text)


async def test_serve_never_logs_or_echoes_the_token(redis_url: str, tmp_path: Path) -> None:
    async with creditgate_serve(
        redis_url, tmp_path, log_level="DEBUG", operator_token="o" * 32
    ) as served:
        admin = int(served.admin.rsplit(":", 1)[1])
        traffic = int(served.traffic.rsplit(":", 1)[1])
        for header in HEADERS:
            check_answer(header, await raw_call(admin, header))
        for header in HEADERS[4:]:
            answer = await raw_call(traffic, header, b"/hooks/web/w1234_a1234")
            assert SECRET not in answer, (header, answer)
    log = (tmp_path / "serve.log").read_bytes()
    assert SECRET not in log, tail(tmp_path / "serve.log")
    assert b"Traceback" not in log, tail(tmp_path / "serve.log")
