"""Signing in again ends the session the browser had (re-authentication renews it).

A browser signed in as A signs in as B (a shared machine, a second account): the
console sets B's cookie over A's, but before A's session stayed live in the store until
its expiry, so a copy of A's cookie (taken before, or left in another profile's jar)
still acted as A after the one browser that held it had moved on. Now the sign-in ends
the session its request carried (loaded as any request's: a cookie that names no live
session ends nothing).
"""

from __future__ import annotations

import aiohttp

from tests.support.adminkit import Admin
from tests.system.test_console_session import sign_in, signed_out


async def test_signing_in_again_ends_the_session_the_browser_had(any_admin: Admin) -> None:
    _, tok_a = await any_admin.new_user("first")
    uid_b, tok_b = await any_admin.new_user("second")
    _, tok_c = await any_admin.new_user("bystander")
    base = any_admin.url
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        status, _, _ = await sign_in(http, base, tok_a)
        assert status == 201
        [cookie_a] = [(c.key, c.value) for c in jar]
        status, me, _ = await sign_in(http, base, tok_b)
        assert (status, me["user"]["id"]) == (201, uid_b)
        async with http.get(f"{base}/v1/tokens") as r:
            assert r.status == 200  # the browser is B now
    async with aiohttp.ClientSession(cookies=dict([cookie_a])) as replay:
        await signed_out(replay, base, "/v1/tokens")
    # Another browser's session is not the request's: a sign-in elsewhere keeps it.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        await sign_in(other, base, tok_c)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            await sign_in(http, base, tok_a)
        async with other.get(f"{base}/v1/tokens") as r:
            assert r.status == 200
