"""A chunked request on the admin port closes its connection, as on the traffic port
(:func:`gateway.http_rules.close_announced`): aiohttp's C parser hands a chunked body's
last trailer field to the next request on the connection as a header, so no request
may follow a chunked one there (a front proxy sharing one upstream connection between
clients would otherwise pass one client's trailer into another's request)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from yarl import URL

from tests.support.bot import running_gateway
from tests.support.settings import make_settings


async def test_a_chunked_admin_request_is_the_last_on_its_connection(
    redis_url: str, tmp_path: Path
) -> None:
    async with running_gateway(make_settings(redis_url, tmp_path)) as gw:
        u = URL(gw.admin_url)
        reader, writer = await asyncio.open_connection(u.host, u.port)
        try:
            writer.write(
                f"POST /healthz HTTP/1.1\r\nHost: {u.authority}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n0\r\nAuthorization: Bearer trailer\r\n\r\n"
                f"GET /healthz HTTP/1.1\r\nHost: {u.authority}\r\n\r\n".encode()
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            assert b"connection: close" in head.lower().split(b"\r\n")
            rest = await asyncio.wait_for(reader.read(), 60)  # until the gateway closes
        finally:
            writer.close()
    assert b"HTTP/1." not in rest  # the request behind it was never served
