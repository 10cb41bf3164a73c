"""The aiohttp connection settings the gateway's ports run with (gateway.http_server)."""

from __future__ import annotations

import pytest
from aiohttp import web

from gateway.http_server import GatewayRunner
from tests.support.settings import make_settings


@pytest.mark.parametrize(("overrides", "expected"), [({}, 10.0), ({"body_linger_s": 0.25}, 0.25)])
async def test_the_lingering_close_lasts_body_linger_s(
    overrides: dict[str, float], expected: float
) -> None:
    """What each connection's protocol reads and drops after an answer given before its
    request's body was in: ``body_linger_s`` (aiohttp's own default, 10 s, unset)."""
    runner = GatewayRunner(web.Application(), make_settings(**overrides))
    await runner.setup()
    try:
        assert runner.server is not None
        handler = runner.server()
        assert handler._lingering_time == expected
    finally:
        await runner.cleanup()
