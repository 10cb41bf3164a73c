"""The admin API end to end: the owner's journey through real sockets, and bad input.

Everything runs for real: the gateway of ``create_app`` (traffic and admin ports) on
loopback, a real redis-server, a real SQLite store, the flusher moving Redis events to
the outbox, and a real HTTP receiver of the signed owner notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.admin_api.openapi import build
from gateway.appkeys import PROXY
from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot
from tests.support.bot import Bot, running_bot
from tests.support.receiver import Receiver, receiver
from tests.support.rounds import Rounds, nothing_left_to_send
from tests.support.settings import OPERATOR_TOKEN

SECRET = "owner-webhook-secret-0123456789"


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    async with running_bot() as b:
        yield b


async def send(
    http: aiohttp.ClientSession, base: str, app: str, users: range, *, want: int = 200
) -> None:
    """One message per user (so one new billing session each), 32 at a time."""

    async def one(i: int) -> None:
        url = f"{base}/hooks/web/{app}/msg"
        async with http.post(url, json={"text": "hi"}, headers={"X-Channel-User-Id": f"u{i}"}) as r:
            body = await r.read()
            assert r.status == want, (i, r.status, body)

    items = list(users)
    for k in range(0, len(items), 32):
        await asyncio.gather(*(one(i) for i in items[k : k + 32]))


async def wait_for(rec: Receiver, count: int, seconds: float = 60.0) -> None:
    try:
        async with asyncio.timeout(seconds):
            while len(rec.got) < count:
                rec.arrived.clear()
                await rec.arrived.wait()
    except TimeoutError:
        raise AssertionError(f"only {rec.types()} arrived") from None


async def test_owner_journey_from_free_credits_to_funds(
    redis_url: str, tmp_path: Path, bot: Bot
) -> None:
    settings = admin_settings(
        redis_url,
        tmp_path,
        rate_per_minute=100_000,
        rate_per_hour=1_000_000,
        flush_interval_s=0.1,
        # 2,500 messages, 32 at a time, each must be served: a Redis timeout no busy
        # machine reaches (at the 0.5 s default one could be refused 503 for its speed).
        redis_timeout_s=10.0,
    )
    async with (
        receiver() as rec,
        admin_server(settings, traffic=True, run_flusher=True) as admin,
        aiohttp.ClientSession() as http,
    ):
        flushes = Rounds(admin.store, "dead_letters")
        deliveries = Rounds(admin.store, "due_events")
        token, ws = await admin.owner_workspace()
        hook = {"url": rec.url, "secret": SECRET}
        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        apps = []
        for name in ("support", "sales"):
            body = {"name": name, "product": "automation", "upstream_url": bot.url}
            apps.append((await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, body))["id"])
        support, sales = apps

        await send(http, admin.traffic_url, support, range(10))
        await send(http, admin.traffic_url, sales, range(5))
        assert bot.count() == 15
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert view["free_credits"]["granted"] == "500.00"
        assert view["free_credits"]["remaining"] == "497.00"
        assert view["usable_balance"] == "497.00"
        assert view["paid_balance"] == "0.00"
        assert view["allowed_sessions"] == 2485
        assert [a["status"] for a in view["apps"]] == ["using_free_credits"] * 2
        assert [a["remaining"] for a in view["apps"]] == ["497.00"] * 2

        await send(http, admin.traffic_url, support, range(10, 2495))  # the last $497
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert view["free_credits"]["remaining"] == "0.00"
        assert view["allowed_sessions"] == 0
        assert [a["status"] for a in view["apps"]] == ["inactive"] * 2
        assert view["inactive_apps"] == 2
        for _ in range(3):  # refused without calling the bot; announced once
            await send(http, admin.traffic_url, support, range(9000, 9001), want=402)
        assert bot.count() == 2500

        await wait_for(rec, 3)
        # More flush and delivery rounds, counted: nothing is sent twice.
        await nothing_left_to_send(admin.store, flushes, deliveries)
        assert sorted(rec.types()) == ["app.inactive", "balance.low", "free_credits.exhausted"]
        assert len(rec.valid(SECRET)) == 3
        inactive = next(r.json for r in rec.got if r.json["type"] == "app.inactive")
        assert inactive["data"]["app_id"] == support  # type: ignore[index]

        funds = {"amount": "100.00", "reference": "invoice-7"}
        added = await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        assert added["created"] is True
        assert added["amount"] == "100.00"
        await send(http, admin.traffic_url, support, range(9001, 9006))
        assert bot.count() == 2505
        view = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert view["paid_balance"] == "99.00"
        assert view["allowed_sessions"] == 495
        assert [a["status"] for a in view["apps"]] == ["sufficient_funds"] * 2
        await wait_for(rec, 4)
        await nothing_left_to_send(admin.store, flushes, deliveries)
        assert rec.types().count("funds.added") == 1
        assert len(rec.valid(SECRET)) == 4

        # Usage: flushed and not yet flushed buckets together, each counted once.
        used = await admin.ok("GET", f"/v1/workspaces/{ws}/usage?granularity=hour", token)
        totals = used["totals"]
        assert totals["sessions"] == 2505
        assert totals["messages"] == 2505
        assert totals["amount"] == "501.00"
        assert totals["amount_free"] == "500.00"
        assert totals["refused"] == {"credits_exhausted": 3}


async def following(admin: Admin, app: str, url: str) -> None:
    """Until the gateway's upstream cache (each entry read again within a second) serves
    ``url`` for ``app``: asked as a message asks it, so no message is sent meanwhile."""
    upstreams = admin.gateway.traffic[PROXY].upstreams
    async with asyncio.timeout(60):  # a hang bound
        while await upstreams.resolve(app) != url:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # between polls; the cache decides when it reads again


async def test_changes_reach_the_gateway_within_a_second(
    redis_url: str, tmp_path: Path, bot: Bot
) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with (
        running_bot() as bot2,
        admin_server(settings, traffic=True) as admin,
        aiohttp.ClientSession() as http,
    ):
        token, ws = await admin.owner_workspace()
        app = await admin.new_app(token, ws, bot.url)
        await send(http, admin.traffic_url, app, range(1))
        await admin.ok("PATCH", f"/v1/apps/{app}", token, {"suspended": True})
        await send(http, admin.traffic_url, app, range(1, 2), want=403)  # at once
        await admin.ok("PATCH", f"/v1/apps/{app}", token, {"suspended": False})
        await send(http, admin.traffic_url, app, range(2, 3))
        await admin.ok("PATCH", f"/v1/apps/{app}", token, {"upstream_url": bot2.url})
        await following(admin, app, bot2.url)
        await send(http, admin.traffic_url, app, range(3, 4))
        assert (bot.count(), bot2.count()) == (2, 1)
        lic = {"licences": {"search": {"usage_limit": 5, "per_minute": 5, "per_hour": 5}}}
        await admin.ok("POST", f"/v1/workspaces/{ws}/upgrade", OPERATOR_TOKEN, lic)
        await send(http, admin.traffic_url, app, range(4, 5), want=403)  # not licensed


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = admin_settings(redis_url, tmp_path)
    # Webhook delivery idles: the snapshots must see only what the requests change.
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


LONG = "x" * 3000
R9 = {"reference": "r9"}  # manual funds need a reference: rows testing another field
LIC = {"usage_limit": 10, "per_minute": 5, "per_hour": 50}
# (method, path template, body: JSON value or raw bytes, status, field named)
BAD: list[tuple[str, str, Any, int, str]] = [
    ("POST", "op:{ws}/funds", b'{"amount": "100.00"', 400, "body"),
    ("POST", "op:{ws}/funds", b"[]", 400, "body"),
    ("POST", "op:{ws}/funds", b"", 400, "body"),
    ("POST", "op:{ws}/funds", b'{"amount": NaN}', 400, "body"),
    ("POST", "op:{ws}/funds", {}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": 100, **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "-5", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "1e3", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "100.001", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "NaN", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "Infinity", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "99.99", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "20000.01", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": " 100.00", **R9}, 422, "amount"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "bonus": True, **R9}, 422, "bonus"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "app_id": "nope", **R9}, 422, "app_id"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "app_id": "{other_app}", **R9}, 422, "app_id"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "reference": LONG}, 422, "reference"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "reference": None}, 422, "reference"),
    ("POST", "op:{ws}/funds", {"amount": "100.00", "reference": "{used_ref}"}, 409, "reference"),
    ("POST", "op:{ws}/funds", {"amount": "100.00"}, 422, "reference"),
    ("POST", "{ws}/checkout", {"amount": "99.99"}, 422, "amount"),
    ("POST", "{ws}/checkout", {"amount": "100.00", "app_id": "{other_app}"}, 422, "app_id"),
    ("POST", "{ws}/checkout", {"amount": "100.00", "reference": "x"}, 422, "reference"),
    ("GET", "{ws}/transactions?limit=0", None, 422, "limit"),
    ("GET", "{ws}/transactions?cursor=abc", None, 422, "cursor"),
    ("POST", "op:/v1/users", {"email": "not-an-email", "name": "x"}, 422, "email"),
    ("POST", "op:/v1/users", {"email": "a@b.co", "name": LONG}, 422, "name"),
    ("POST", "op:/v1/users", {"email": ["a@b.co"], "name": "x"}, 422, "email"),
    ("POST", "op:/v1/users", {"email": "a@b.co"}, 422, "name"),
    ("POST", "/v1/workspaces", {"name": ""}, 422, "name"),
    ("POST", "{ws}/apps", {"name": "b", "product": "chat"}, 422, "product"),
    ("POST", "{ws}/apps", {"name": 5, "product": "search"}, 422, "name"),
    ("POST", "{ws}/apps", {"name": "b", "product": "search", "upstream_url": "ftp://h/x"},
     422, "upstream_url"),
    ("POST", "{ws}/apps", {"name": "b", "product": "search", "upstream_url": "http://" + LONG},
     422, "upstream_url"),
    ("POST", "{ws}/apps", {"name": "b", "product": "search", "upstream_url": "http://a b/"},
     422, "upstream_url"),
    ("PATCH", "{app}", {"suspended": "yes"}, 422, "suspended"),
    ("PATCH", "{app}", {"use_free_credits": 1}, 422, "use_free_credits"),
    ("PATCH", "{app}", {"owner_id": "u1234"}, 422, "owner_id"),
    ("POST", "{app}/collaborators", {"user_id": "{member}", "role": "admin"}, 422, "role"),
    ("POST", "{app}/transfer", {"user_id": "{stranger}"}, 422, "user_id"),
    ("POST", "{app}/transfer", {"user_id": "UPPER"}, 422, "user_id"),
    ("POST", "{ws}/upgrade-requests", {"products": []}, 422, "products"),
    ("POST", "{ws}/upgrade-requests", {"products": ["search"], "message": LONG}, 422, "message"),
    ("PUT", "{ws}/webhook", {"url": "http://127.0.0.1/h", "secret": "short"}, 422, "secret"),
    ("PUT", "{ws}/webhook", {"url": "javascript:alert(1)", "secret": "s" * 20}, 422, "url"),
    ("POST", "op:{ws}/upgrade", {"licences": {}}, 422, "licences"),
    ("POST", "op:{ws}/upgrade", {"licences": {"chat": LIC}}, 422, "licences.chat"),
    ("POST", "op:{ws}/upgrade", {"licences": {"search": {**LIC, "usage_limit": -1}}},
     422, "licences.search.usage_limit"),
    ("POST", "op:{ws}/upgrade", {"licences": {"search": {**LIC, "per_minute": 1.5}}},
     422, "licences.search.per_minute"),
    ("POST", "op:{ws}/upgrade", {"licences": {"search": {**LIC, "per_hour": 4}}},
     422, "licences.search.per_hour"),
    ("GET", "{ws}/usage?granularity=year", None, 422, "granularity"),
    ("GET", "{ws}/usage?from=yesterday", None, 422, "from"),
    ("GET", "{ws}/usage?from=2027-01-02&to=2027-01-01", None, 422, "from"),
    ("GET", "{ws}/usage?foo=1", None, 422, "foo"),
    ("GET", "{ws}/sessions?app_id=x", None, 422, "app_id"),
]  # fmt: skip


async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(admin: Admin) -> None:
    _, token = await admin.new_user("owner")
    member, _ = await admin.new_user("member")
    stranger, stranger_token = await admin.new_user("stranger")
    ws = await admin.new_workspace(token, "Acme")
    other = await admin.new_workspace(stranger_token, "Else")
    await admin.ok("POST", f"/v1/workspaces/{ws}/members", token, {"user_id": member})
    app = {"name": "bot", "product": "search"}
    app_id = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, app))["id"]
    other_app = await admin.ok("POST", f"/v1/workspaces/{other}/apps", stranger_token, app)
    await admin.ok(
        "POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, {"amount": "100", "reference": "r1"}
    )
    names = {"ws": ws, "app": app_id, "other_app": other_app["id"], "member": member,
             "stranger": stranger, "used_ref": "r1"}  # fmt: skip

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.format(**names) if "{" in value and "}" in value else value
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    before = await snapshot(admin)
    wrong = []
    for method, path, body, status, field in BAD:
        who = OPERATOR_TOKEN if path.startswith("op:") else token
        path = path.removeprefix("op:")
        if path.startswith("{ws}"):
            path = "/v1/workspaces/" + path
        elif path.startswith("{app}"):
            path = "/v1/apps/" + path
        if body == {"amount": "100.00", "reference": "{used_ref}"}:
            body = {"amount": "150.00", "reference": "r1"}
        url = fill(path)
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json"}
            got, answer = await admin.api(method, url, who, data=body, headers=headers)
        else:
            got, answer = await admin.api(method, url, who, fill(body))
        if got != status or answer.get("field") != field:
            wrong.append(f"{method} {path} {body!r}: {got} {answer}")
        elif status == 422:
            assert answer["code"] == "invalid_input", answer
            assert answer["errors"], answer
    assert not wrong, "\n".join(wrong)
    assert await snapshot(admin) == before


@pytest.mark.parametrize(
    "variant",
    [
        "ÅSA@EXAMPLE.COM",  # upper case beyond ASCII (SQLite's lower() is ASCII only)
        "A\u030asa@example.com",  # decomposed: A + combining ring
        "\u212bsa@example.com",  # the Angstrom sign
        "\u00c5\uff53\uff41@example.com",  # full-width letters
    ],
    ids=["upper", "nfd", "angstrom-sign", "fullwidth"],
)
async def test_variants_of_an_email_are_one_user(admin: Admin, variant: str) -> None:
    """Free credits are once per user: a variant of a taken email cannot make another."""
    first = {"email": "åsa@example.com", "name": "Åsa"}
    status, body = await admin.api("POST", "/v1/users", OPERATOR_TOKEN, first)
    assert status == 201, body
    assert body["email"] == "åsa@example.com"
    again = {"email": variant, "name": "Åsa"}
    status, body = await admin.api("POST", "/v1/users", OPERATOR_TOKEN, again)
    assert (status, body["code"]) == (409, "email_taken"), body
    plus = {"email": "åsa+2@example.com", "name": "Åsa"}  # another mailbox
    assert (await admin.api("POST", "/v1/users", OPERATOR_TOKEN, plus))[0] == 201


async def test_openapi_document_matches_the_routes(admin: Admin) -> None:
    status, doc = await admin.api("GET", "/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    assert doc == build()
    funds = doc["paths"]["/v1/workspaces/{ws}/funds"]["post"]
    schema_ref = funds["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["amount", "reference"]
    assert {"201", "200", "401", "403", "404", "422"} <= set(funds["responses"])


async def test_console_is_served(admin: Admin) -> None:
    async with admin.client.get("/ui") as r:
        html = await r.text()
        assert r.status == 200
        assert "console.js" in html
        # No inline script or style may run (the server's SVG uses attributes only).
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    status, js = await admin.api("GET", "/ui/static/console.js")
    assert status == 200
    assert "/plan-usage" in js
    assert "localStorage" not in js


async def test_routing_errors_are_problems(admin: Admin) -> None:
    """aiohttp's own 404 and 405 are answered as problem+json; a 405 keeps its Allow."""
    async with admin.client.get("/v1/no-such-thing") as r:
        assert r.status == 404
        assert r.content_type == "application/problem+json"
        assert (await r.json(content_type=None))["code"] == "not_found"
    async with admin.client.request("PATCH", "/v1/openapi.json") as r:
        assert r.status == 405
        assert r.content_type == "application/problem+json"
        assert (await r.json(content_type=None))["code"] == "method_not_allowed"
        assert "GET" in r.headers["Allow"]
