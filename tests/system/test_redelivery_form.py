"""A redelivery must repeat its message as the bot reads it, on both traffic servers.

A keyed message redelivered is proxied again but charged once, so the gateway checks
that it is the same message (method, target and body: ``message_digest``); another
message under a used key is 409 and never reaches the bot. The body alone does not say
what the message is: its ``Content-Type`` (media type, charset, multipart boundary) and
``Content-Encoding`` tell the bot how to read it. Before, the same bytes under another
of these were a free "redelivery": ``{"q":"Q1","z":"&q=Q2&"}`` is the question Q1 as
JSON and Q2 as a form, and a multipart body says what its boundary picks, so one
charge bought as many different questions as a key's redeliveries (5 by default). A
method override (``X-HTTP-Method-Override`` and its spellings), which some frameworks
honour, makes the same POST another verb to the bot: it counts too, when present.
Real sockets, a real counting bot, real Redis.
"""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict

from gateway import fingerprint
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, SeededGateway, free_credit, post_message

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "redform"
APP = f"{WS}_reqs"  # contact_center: every message costs one cent
FREE = 10_000_000
PRICE = 10_000
OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
JSON_OR_FORM = b'{"q":"Q1","z":"&q=Q2&"}'
TWO_BOUNDARIES = (
    b"--a\r\nContent-Disposition: form-data; name=q\r\n\r\nQ1\r\n--a--\r\n"
    b"--b\r\nContent-Disposition: form-data; name=q\r\n\r\nQ2\r\n--b--\r\n"
)
FORMS = {
    "media type": (
        JSON_OR_FORM,
        {"Content-Type": "application/json"},
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "charset": (
        b'{"q":"Q1+ACIALAAi-q+ACIAOgAi-Q2"}',  # UTF-7: {"q":"Q1","q":"Q2"}
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/json; charset=utf-7"},
    ),
    "multipart boundary": (
        TWO_BOUNDARIES,
        {"Content-Type": "multipart/form-data; boundary=a"},
        {"Content-Type": "multipart/form-data; boundary=b"},
    ),
    "content coding": (
        JSON_OR_FORM,
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "Content-Encoding": "deflate"},
    ),
    # A bot on a framework that honours a method override reads this POST as a DELETE.
    "method override": (
        JSON_OR_FORM,
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "X-HTTP-Method-Override": "DELETE"},
    ),
    "method override, another spelling": (
        JSON_OR_FORM,
        {"Content-Type": "application/json", "X-HTTP-Method": "PUT"},
        {"Content-Type": "application/json", "X-HTTP-Method": "PATCH"},
    ),
}


@pytest.mark.parametrize("case", FORMS)
async def test_the_same_bytes_read_otherwise_are_another_message(
    seeded_gateway: SeededGateway,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    case: str,
) -> None:
    body, first, other = FORMS[case]
    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        sent = await post_message(http, url, "mallory", "k1", body=body, headers=first)
        impostor = await post_message(http, url, "mallory", "k1", body=body, headers=other)
        again = await post_message(http, url, "mallory", "k1", body=body, headers=first)
    assert (sent, impostor, again) == (200, 409, 200)
    # The bot got the message and its true redelivery, both read as the first said.
    for call in bot.calls:
        assert call.body == body
        for name in ("Content-Type", "Content-Encoding", *OVERRIDES):
            assert call.headers.getall(name, []) == [v for k, v in first.items() if k == name]
    assert len(bot.calls) == 2
    assert await free_credit(rclient, WS) == FREE - PRICE


async def test_a_true_redelivery_is_still_served_and_charged_once(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """Header case and the order of other headers do not make another message."""
    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        form = {"Content-Type": "application/json", "Content-Encoding": "identity"}
        statuses = [
            await post_message(http, url, "u1", "k2", body=JSON_OR_FORM, headers=form),
            await post_message(http, url, "u1", "k2", body=JSON_OR_FORM,
                               headers={"content-encoding": "identity", "X-Retry": "1",
                                        "content-type": "application/json"}),
        ]  # fmt: skip
    assert statuses == [200, 200]
    assert len(bot.calls) == 2
    assert await free_credit(rclient, WS) == FREE - PRICE


async def test_two_content_encoding_lines_are_not_one_line_listing_both(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """aiohttp decodes a body by the first Content-Encoding line alone: ``deflate`` then
    ``gzip`` is a deflated body to it, ``deflate,gzip`` in one line a body it leaves as is
    (another question). Both were ``deflate,gzip`` to the fingerprint (since a6a77a0)."""
    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        base = {"X-Channel-User-Id": "mallory", "Idempotency-Key": "k4"}
        lines = CIMultiDict([*base.items(), ("Content-Encoding", "deflate"),
                             ("Content-Encoding", "gzip")])  # fmt: skip
        statuses = []
        for headers in (lines, {**base, "Content-Encoding": "deflate,gzip"}, lines):
            async with http.post(url, data=JSON_OR_FORM, headers=headers) as resp:
                await resp.read()
                statuses.append(resp.status)
    assert statuses == [200, 409, 200]
    assert [c.headers.getall("Content-Encoding") for c in bot.calls] == [["deflate", "gzip"]] * 2
    assert await free_credit(rclient, WS) == FREE - PRICE


async def test_a_message_recorded_before_the_upgrade_is_still_redelivered(
    seeded_gateway: SeededGateway,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record the previous version made holds the fingerprint without the headers: the
    message's genuine redelivery (Meta's retry of a delivery the bot failed, say) is
    served, not refused 409 until the record expires; another message is still 409."""
    original = fingerprint.message_digest

    def before(
        method: str, path: str, body: object, part: bytes = b"", headers: object = None
    ) -> str:
        return original(method, path, body, part)  # the previous version's fingerprint

    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        form = {"Content-Type": "application/json"}
        with monkeypatch.context() as patched:
            patched.setattr(fingerprint, "message_digest", before)
            sent = await post_message(http, url, "u3", "k5", body=JSON_OR_FORM, headers=form)
        again = await post_message(http, url, "u3", "k5", body=JSON_OR_FORM, headers=form)
        another = await post_message(http, url, "u3", "k5", body=b'{"q":"Q3"}', headers=form)
    assert (sent, again, another) == (200, 200, 409)
    assert len(bot.calls) == 2
    assert await free_credit(rclient, WS) == FREE - PRICE


async def test_a_keyed_message_inside_a_paid_session_keeps_its_fingerprint(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """A session's later message takes admit.lua's short path, which writes its record
    itself: it records the fingerprint alone, so its redelivery is served, an impostor not."""
    async with seeded_gateway(WS, {APP: {"product": "automation"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        body, first, other = FORMS["media type"]
        statuses = [
            await post_message(http, url, "u4", key, body=body, headers=form)
            for key, form in (("s1", first), ("s2", first), ("s2", first), ("s2", other))
        ]
        charged = FREE - await free_credit(rclient, WS)
    assert statuses == [200, 200, 200, 409]
    assert len(bot.calls) == 3
    assert charged > 0


async def test_a_body_spelling_out_the_first_one_s_headers_is_another_message(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """The fingerprint without headers, taken for records of the previous version, hashed
    the method and target then the body; the one with them the same, then the headers,
    then the body. A body that starts with the first message's headers as the fingerprint
    writes them made the second's old fingerprint the first's new one: another question
    (a form here), free. The two are hashed apart now."""
    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        first = {"Content-Type": "application/json"}
        other = {"Content-Type": "application/x-www-form-urlencoded"}
        spelled = b"application/json\n\n" + JSON_OR_FORM  # Content-Type, Content-Encoding ""
        sent = await post_message(http, url, "mallory", "k6", body=JSON_OR_FORM, headers=first)
        impostor = await post_message(http, url, "mallory", "k6", body=spelled, headers=other)
    assert (sent, impostor) == (200, 409)
    assert [c.body for c in bot.calls] == [JSON_OR_FORM]
    assert await free_credit(rclient, WS) == FREE - PRICE


async def test_a_body_spelling_out_a_method_override_is_another_message(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    """A method override is hashed only when present, after the other header lines: were
    it hashed under the same personalization, a message without one whose body starts
    with the override's lines as the fingerprint writes them would be the overriding
    message's redelivery (and the other way round)."""
    async with seeded_gateway(WS, {APP: {"product": "contact_center"}}, free=FREE) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        first = {"Content-Type": "application/json", "X-HTTP-Method-Override": "DELETE"}
        other = {"Content-Type": "application/json"}
        spelled = b"DELETE\n\n\n" + JSON_OR_FORM  # the three overrides' lines, then the body
        sent = await post_message(http, url, "mallory", "k7", body=JSON_OR_FORM, headers=first)
        impostor = await post_message(http, url, "mallory", "k7", body=spelled, headers=other)
    assert (sent, impostor) == (200, 409)
    assert [c.body for c in bot.calls] == [JSON_OR_FORM]
    assert await free_credit(rclient, WS) == FREE - PRICE
