"""Every ``/v1`` answer carries the headers that keep it out of caches, sniffing and
frames (gateway.admin_api.SECURITY_HEADERS): successes, every kind of error, the
OpenAPI document, bearer or console-cookie authenticated alike; ``/ui`` keeps its own."""

from __future__ import annotations

import aiohttp

from tests.support.adminkit import Admin

WANTED = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


async def test_every_v1_answer_is_uncached_unsniffed_unframed(any_admin: Admin) -> None:
    tok, ws = await any_admin.owner_workspace()
    bearer = {"Authorization": f"Bearer {tok}"}
    calls = [
        ("GET", f"/v1/workspaces/{ws}/plan-usage", bearer, None, 200),
        ("GET", f"/v1/workspaces/{ws}", bearer, None, 200),
        ("GET", "/v1/workspaces", {}, None, 401),
        ("GET", "/v1/workspaces", {"Authorization": "Bearer cgu_nope"}, None, 401),
        ("POST", "/v1/workspaces", bearer, {"name": ""}, 422),
        ("POST", f"/v1/workspaces/{ws}/funds", bearer, {"amount": "1.00"}, 403),
        ("GET", "/v1/workspaces/w0000000000zz", bearer, None, 404),
        ("GET", "/v1/no-such-route", bearer, None, 404),
        ("DELETE", "/v1/openapi.json", {}, None, 405),
        ("GET", "/v1/openapi.json", {}, None, 200),
    ]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for method, path, headers, body, status in calls:
            async with http.request(method, any_admin.url + path, headers=headers, json=body) as r:
                assert r.status == status, (method, path, r.status, await r.text())
                got = {name: r.headers.get(name) for name in WANTED}
                assert got == WANTED, (method, path, got)


async def test_the_console_cookie_answers_carry_them_and_ui_keeps_its_own(
    any_admin: Admin,
) -> None:
    _, tok = await any_admin.new_user("owner")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        base = any_admin.url
        async with http.post(f"{base}/ui/session", json={"token": tok}) as r:
            assert r.status == 201
        async with http.get(f"{base}/v1/tokens") as r:
            assert r.status == 200
            assert {n: r.headers.get(n) for n in WANTED} == WANTED
        async with http.post(f"{base}/v1/workspaces", json={"name": "x"}) as r:
            assert r.status == 403  # no CSRF token
            assert {n: r.headers.get(n) for n in WANTED} == WANTED
        async with http.get(f"{base}/ui") as r:
            assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["X-Content-Type-Options"] == "nosniff"
