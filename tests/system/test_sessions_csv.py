"""``GET /v1/workspaces/{ws}/sessions`` as CSV without paging arguments: the whole range.

More sessions than a JSON page (or the 10,000 rows the CSV was once cut at) come in one
streamed answer, in order, and add up to the usage of the same range.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.webhooks import WebhookOptions
from meter.store import SessionRow, UsageRow
from tests.support.adminkit import Admin, admin_server, admin_settings

T0 = 1_793_491_200_000  # 2026-11-01T00:00Z
RANGE = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def test_the_csv_of_a_range_holds_every_session(admin: Admin) -> None:
    token, ws = await admin.owner_workspace()
    app = await admin.new_app(token, ws, "https://bot.example.com/hook")
    n = 10_050
    rows = [
        SessionRow(ws, f"s{i:08d}", app, "web", f"=user{i}", "automation",
                   T0 + i * 1000, T0 + i * 1000 + 5, 1, 200_000, 1)
        for i in range(n)
    ]  # fmt: skip
    usage = UsageRow(ws, T0, app, "web", "automation", "session", units=n, messages=n,
                     amount_pool=n * 200_000)  # fmt: skip
    await admin.store.write_flush_batch(f"{ws}:sr:1:1", ws, "sr", T0, session_rows=rows)
    await admin.store.write_flush_batch(f"{ws}:ag:1:1", ws, "ag", T0, usage_rows=[usage])

    path = f"/v1/workspaces/{ws}/sessions?{RANGE}"
    h = {"Authorization": f"Bearer {token}", "Accept": "text/csv"}
    async with admin.client.get(path, headers=h) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert "X-Next-Cursor" not in resp.headers
        text = (await resp.read()).decode()
    got = list(csv.DictReader(io.StringIO(text)))
    assert [r["billing_session_id"] for r in got] == [r.id for r in rows]
    assert got[0]["channel_user"] == "'=user0"  # formula-safe, as before
    totals = (await admin.ok("GET", f"/v1/workspaces/{ws}/usage?{RANGE}&granularity=month",
                             token))["totals"]  # fmt: skip
    assert totals["sessions"] == len(got)
    assert sum(int(r["amount"].replace(".", "")) for r in got) == n * 20  # cents

    status, newest = await admin.api(
        "GET", f"{path}&order=desc", token, headers={"Accept": "text/csv"}
    )
    assert status == 200
    assert [r["billing_session_id"] for r in csv.DictReader(io.StringIO(newest))] == [
        r.id for r in reversed(rows)
    ]
    # Paging arguments: one page, the cursor in X-Next-Cursor, as before.
    async with admin.client.get(f"{path}&limit=100", headers=h) as resp:
        page = list(csv.DictReader(io.StringIO((await resp.read()).decode())))
        assert len(page) == 100
        assert resp.headers["X-Next-Cursor"]
