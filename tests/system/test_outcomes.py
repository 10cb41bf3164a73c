"""Who a failed request is down to, as creditgate_requests_total{outcome} says on both
traffic servers: a tenant's failing bot is ``bot_error`` and a request to no app or an
invalid one ``client_error``, never ``error`` (the gateway's own, which pages the
operator: k8s/base/prometheusrule.yaml) nor, for an unknown app, ``refused``."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import gateway.answer_back
import gateway.fastpath.exchange
from tests.support.bot import Running, SeededGateway
from tests.support.servers import free_port

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "outcomes"
APP = f"{WS}_app1"
DOWN = f"{WS}_down"
BROKE = f"{WS}_broke"
FUNDS = 1_000_000


def apps() -> dict[str, dict[str, object]]:
    return {
        APP: {"product": "automation", "funds": FUNDS},
        DOWN: {
            "product": "automation",
            "upstream_url": f"http://127.0.0.1:{free_port()}",  # nothing listens
            "funds": FUNDS,
        },
        BROKE: {"product": "automation"},  # no funds, no free credit: 402
    }


async def outcomes(http: aiohttp.ClientSession, gw: Running) -> dict[str, float]:
    """creditgate_requests_total of channel web, by outcome."""
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["outcome"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "creditgate_requests"
        for s in family.samples
        if s.name == "creditgate_requests_total" and s.labels["channel"] == "web"
    }


async def refusals(http: aiohttp.ClientSession, gw: Running) -> dict[str, float]:
    async with http.get(f"{gw.admin_url}/metrics") as resp:
        text = await resp.text()
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "creditgate_refusals"
        for s in family.samples
        if s.name == "creditgate_refusals_total"
    }


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    h = {"X-Channel-User-Id": "u1", **(headers or {})}
    async with http.post(url, headers=h, data=b"hi") as resp:
        body = await resp.read()
        code = orjson.loads(body).get("code", "") if resp.status >= 400 else ""
        return resp.status, code


async def test_a_failing_bot_is_a_bot_error(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, apps()) as gw:
        assert await post(http, f"{gw.url}/hooks/web/{DOWN}") == (502, "upstream_unavailable")
        assert await post(http, f"{gw.url}/hooks/web/{APP}/status/500") == (502, "upstream_error")
        assert (await post(http, f"{gw.url}/hooks/web/{APP}/ok"))[0] == 200
        counted = await outcomes(http, gw)
    assert counted["bot_error"] == 2
    assert counted["admitted"] == 1
    assert counted["error"] == 0  # the gateway did nothing wrong


async def test_an_unknown_app_is_a_client_error_not_a_refusal(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, apps()) as gw:
        assert await post(http, f"{gw.url}/hooks/web/{WS}_nosuch") == (404, "unknown_app")
        assert await post(http, f"{gw.url}/hooks/web/{BROKE}") == (402, "credits_exhausted")
        counted = await outcomes(http, gw)
        reasons = await refusals(http, gw)
    assert counted["client_error"] == 1
    assert counted["refused"] == 1  # the tenant's own refusal, credits_exhausted
    assert counted["error"] == 0
    assert reasons["unknown_app"] == 1  # still counted by reason
    assert reasons["credits_exhausted"] == 1


async def test_what_anyone_can_send_is_never_the_gateways_error(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession
) -> None:
    # Before any app is looked up: a body over the limit (413), a request that says it
    # came through this gateway already (508).
    async with seeded_gateway(WS, apps(), max_body_bytes=16) as gw:
        url = f"{gw.url}/hooks/web/{WS}_nosuch"
        async with http.post(url, data=b"x" * 17) as resp:
            assert resp.status == 413
        assert await post(http, url, {"Via": "1.1 creditgate"}) == (508, "loop_detected")
        counted = await outcomes(http, gw)
    assert counted["client_error"] == 2
    assert counted["error"] == 0


async def test_a_gateway_failure_while_answering_is_its_error_not_the_bots(
    seeded_gateway: SeededGateway, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug of the gateway's own in the answer path (simulated) must page, as a 500, on
    # both servers: the fast path's parser used to take any callback error for an invalid
    # answer of the bot's (502 bot_error, refunded, logged at INFO).
    def broken(*_: object) -> object:
        raise RuntimeError("a gateway bug")

    monkeypatch.setattr(gateway.fastpath.exchange, "answer_head", broken)
    monkeypatch.setattr(gateway.answer_back, "downstream_headers", broken)
    async with seeded_gateway(WS, apps()) as gw:
        assert await post(http, f"{gw.url}/hooks/web/{APP}/ok") == (500, "internal_error")
        counted = await outcomes(http, gw)
        async with http.get(f"{gw.admin_url}/metrics") as resp:
            families = list(text_string_to_metric_families(await resp.text()))
    assert counted["error"] == 1
    assert counted["bot_error"] == 0
    samples = {(s.name, s.labels.get("outcome")): s.value for f in families for s in f.samples}
    assert samples[("creditgate_refunds_total", None)] == 0  # the bot did answer
    assert samples.get(("creditgate_upstream_seconds_count", "5xx"), 0) == 0
