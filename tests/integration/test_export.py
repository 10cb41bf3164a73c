"""Billing export (CSV / NDJSON) and the usage series with live buckets merged."""

from __future__ import annotations

import argparse
import csv
import io
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from gateway import cli_commands
from meter.errors import InvalidInput
from meter.redis_layer.client import RedisClient
from meter.store import SessionRow, Store, UsageRow
from meter.usage.export import SESSION_FIELDS, USAGE_FIELDS, export_stream, parse_time
from meter.usage.flusher import Flusher
from meter.usage.series import usage
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws, store_url
from tests.support.metering import admitter
from tests.support.settings import make_settings

WS = "wexport01"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# Buckets chosen around week and month edges (2026-09-27 is a Sunday, 09-28 a Monday).
ROWS = [
    ("2026-09-27T23:59:00", "web", 3, 600_000),
    ("2026-09-28T00:00:00", "web", 5, 1_000_000),
    ("2026-09-30T12:00:00", "slack", 7, 1_400_000),
    ("2026-10-01T00:00:00", "web", 11, 2_200_000),
    ("2026-10-04T23:00:00", "slack", 13, 2_600_000),
    ("2026-10-05T00:00:00", "web", 17, 3_400_000),
    ("2026-11-01T10:00:00", "web", 19, 3_800_000),
]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(store_url(request.param, request, tmp_path)):
        for i, (at, channel, units, amount) in enumerate(ROWS):
            row = UsageRow(
                WS, ms(at), f"{WS}_app1", channel, "automation", "session", units=units,
                messages=2 * units, amount_free=amount // 2, amount_pool=amount - amount // 2,
                refused={"rate_limited": 1},
            )  # fmt: skip
            session = SessionRow(
                WS, f"s{i}", f"{WS}_app1", channel, f"=cmd{i}" if i == 0 else f"U{i}",
                "automation", ms(at), ms(at) + 61_000, 4, amount,
            )  # fmt: skip
            assert await s.write_flush_batch(
                f"t{i}", WS, "ag", ms(at), usage_rows=[row], session_rows=[session]
            )
        yield s


async def collect(chunks: AsyncIterator[bytes]) -> str:
    return b"".join([c async for c in chunks]).decode()


FROM, TO = ms("2026-09-01T00:00:00"), ms("2026-11-15T00:00:00")


async def test_csv_totals_equal_the_store(store: Store) -> None:
    text = await collect(
        export_stream(store, kind="usage", fmt="csv", from_ms=FROM, to_ms=TO, granularity="day")
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(USAGE_FIELDS)
    tot = await store.usage_totals(WS, from_ms=FROM, to_ms=TO)
    assert sum(int(r["units"]) for r in rows) == tot.total_units == sum(r[2] for r in ROWS)
    assert sum(int(r["messages"]) for r in rows) == tot.messages
    cents = sum(round(float(r["amount"]) * 100) for r in rows)
    assert cents * 10_000 == tot.amount
    assert sum(int(r["refused_rate_limited"]) for r in rows) == len(ROWS)
    assert rows[0]["amount"] == "0.60"
    assert rows[0]["period_start"] == "2026-09-27T00:00:00Z"
    assert rows[0]["period_end"] == "2026-09-28T00:00:00Z"


async def test_ndjson_is_one_object_per_line(store: Store) -> None:
    text = await collect(
        export_stream(store, kind="usage", fmt="ndjson", from_ms=FROM, to_ms=TO, granularity="hour")
    )
    lines = text.splitlines()
    assert text.endswith("\n")
    assert len(lines) == len(ROWS)
    objs = [orjson.loads(line) for line in lines]
    assert all(set(o) == set(USAGE_FIELDS) for o in objs)
    assert [o["units"] for o in objs] == [r[2] for r in ROWS]
    assert objs[-1]["period_start"] == "2026-11-01T10:00:00Z"
    assert objs[-1]["amount_free"] == "1.90"
    assert (objs[-1]["app_id"], objs[-1]["amount_app_paid"]) == (f"{WS}_app1", "0.00")
    assert objs[-1]["amount"] == "3.80"


async def test_weeks_are_iso_weeks_and_months_calendar_months(store: Store) -> None:
    weeks = [
        orjson.loads(line)
        for line in (
            await collect(
                export_stream(
                    store, kind="usage", fmt="ndjson", from_ms=FROM, to_ms=TO, granularity="week"
                )
            )
        ).splitlines()
    ]
    got = [(o["period_start"], o["period_end"], o["channel"], o["units"]) for o in weeks]
    assert got == [
        ("2026-09-21T00:00:00Z", "2026-09-28T00:00:00Z", "web", 3),
        ("2026-09-28T00:00:00Z", "2026-10-05T00:00:00Z", "slack", 7 + 13),
        ("2026-09-28T00:00:00Z", "2026-10-05T00:00:00Z", "web", 5 + 11),
        ("2026-10-05T00:00:00Z", "2026-10-12T00:00:00Z", "web", 17),
        ("2026-10-26T00:00:00Z", "2026-11-02T00:00:00Z", "web", 19),
    ]
    for o in weeks:  # every week starts on a Monday at midnight UTC
        start = datetime.fromisoformat(o["period_start"].replace("Z", "+00:00"))
        assert start.weekday() == 0
        assert start.hour == 0
    text = await collect(
        export_stream(store, kind="usage", fmt="csv", from_ms=FROM, to_ms=TO, granularity="month")
    )
    months = [
        (r["period_start"], r["period_end"], r["channel"], int(r["units"]))
        for r in csv.DictReader(io.StringIO(text))
    ]
    assert months == [
        ("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z", "slack", 7),
        ("2026-09-01T00:00:00Z", "2026-10-01T00:00:00Z", "web", 8),
        ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "slack", 13),
        ("2026-10-01T00:00:00Z", "2026-11-01T00:00:00Z", "web", 28),
        ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "web", 19),
    ]


async def test_range_over_90_days_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput, match="90 days"):
        export_stream(store, kind="usage", fmt="csv", from_ms=FROM, to_ms=FROM + 91 * 86_400_000)
    with pytest.raises(InvalidInput):
        export_stream(store, kind="sessions", fmt="csv", from_ms=TO, to_ms=FROM)
    with pytest.raises(InvalidInput):
        export_stream(store, kind="usage", fmt="xml", from_ms=FROM, to_ms=TO)
    with pytest.raises(InvalidInput):
        parse_time("yesterday")


async def test_session_detail_export(store: Store) -> None:
    text = await collect(
        export_stream(store, kind="sessions", fmt="csv", from_ms=FROM, to_ms=TO, workspace=WS)
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(SESSION_FIELDS)
    assert len(rows) == len(ROWS)
    assert rows[0]["channel_user"] == "'=cmd0"  # never a spreadsheet formula
    assert rows[1]["start"] == "2026-09-28T00:00:00Z"
    assert rows[1]["end"] == "2026-09-28T00:01:01Z"
    assert sum(round(float(r["amount"]) * 1e6) for r in rows) == sum(r[3] for r in ROWS)
    nd = await collect(
        export_stream(store, kind="sessions", fmt="ndjson", from_ms=FROM, to_ms=TO, workspace=WS)
    )
    assert [orjson.loads(line)["billing_session_id"] for line in nd.splitlines()][:2] == [
        "s0",
        "s1",
    ]


async def test_cli_export_writes_a_file(store: Store, tmp_path: Path) -> None:
    cfg = make_settings(fast_flush=True, store_url=store.url)
    out = tmp_path / "usage.csv"
    args = argparse.Namespace(
        from_="2026-09-01", to="2026-11-15T00:00:00Z", workspace=WS, granularity="week",
        format="csv", sessions=False, output=str(out),
    )  # fmt: skip
    await store.close()
    assert await cli_commands_in_thread(cfg, args) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["units"]) for r in rows) == sum(r[2] for r in ROWS)
    args.to = "2027-01-01"
    assert await cli_commands_in_thread(cfg, args) == 2  # over 90 days


async def cli_commands_in_thread(cfg: object, args: argparse.Namespace) -> int:
    import asyncio

    return await asyncio.to_thread(cli_commands.export, cfg, args)  # type: ignore[arg-type]


async def test_usage_merges_live_buckets_without_double_counting(
    rclient: RedisClient, tmp_path: Path
) -> None:
    cfg, clock = make_settings(fast_flush=True), Clock.past()
    async for st in opened_store(f"sqlite:///{tmp_path / 'u.db'}"):
        w = await seed_ws(rclient, st, cfg, clock, products=["agent"], pool=10 * USD)
        adm = admitter(rclient, cfg, clock)
        start_ms = int(clock.now * 1000)
        for _ in range(30):
            await adm.admit(w.apps[0], "web", "u")
            clock.advance(0.2)
        flusher = Flusher(rclient, st, cfg, clock=clock)
        await flusher.flush_once()  # the older buckets are flushed, the newest are live
        flushed = (await st.usage_totals(w.ws)).requests
        assert 0 < flushed < 30
        # A claim committed but not acked (its flusher died) must not count twice.
        bucket = int(clock.now)
        await adm.admit(w.apps[0], "web", "u")
        _, claim = await flusher._claims.claim(w.ws, "ag", bucket)
        assert claim is not None
        from meter.usage.batches import build

        assert await st.write_flush_batch(
            claim.batch_id, w.ws, "ag", bucket * 1000, usage_rows=build(claim).usage
        )
        end_ms = int(clock.now * 1000) + 3_600_000
        series = await usage(st, rclient, w.ws, start_ms, end_ms, "hour")
        assert sum(p.requests for p in series) == 31
        assert sum(p.amount for p in series) == 31 * 20_000
        stored = await usage(st, rclient, w.ws, start_ms, end_ms, "hour", include_live=False)
        assert sum(p.requests for p in stored) == flushed + 1
        other = await usage(st, rclient, w.ws, start_ms, end_ms, "day", channel="slack")
        assert sum(p.requests for p in other) == 0


async def test_a_failed_export_leaves_the_output_as_it_was(tmp_path: Path) -> None:
    # A billing job runs `creditgate export -o FILE`. An export that fails midway (here a
    # row the store gives back but the export cannot read; in life the store gone
    # midway) must not leave at FILE a file that looks whole, nor destroy the last good one.
    url = f"sqlite:///{tmp_path / 'x.db'}"
    start = ms("2026-10-01T00:00:00")
    async for st in opened_store(url):
        sessions = [
            SessionRow(
                WS,
                f"s{i:05d}",
                f"{WS}_app1",
                "web",
                f"user-{i:05d}",
                "automation",
                start + i * 1000,
                start + i * 1000 + 500,
                1,
                200_000,
            )
            for i in range(1500)
        ]  # fmt: skip  (about 150 kB of CSV: several chunks before the last row)
        assert await st.write_flush_batch("b0", WS, "sr", start, session_rows=sessions)
    cfg = make_settings(fast_flush=True, store_url=url)
    out = tmp_path / "sessions.csv"
    args = argparse.Namespace(
        from_="2026-10-01", to="2026-10-02", workspace=WS, granularity="day",
        format="csv", sessions=True, output=str(out),
    )  # fmt: skip
    assert await cli_commands_in_thread(cfg, args) == 0
    good = out.read_bytes()
    assert good.count(b"\n") == 1501
    with sqlite3.connect(tmp_path / "x.db") as db:  # the last row, unreadable
        db.execute("UPDATE billing_sessions SET amount = 'lost' WHERE id = 's01499'")
    with pytest.raises(TypeError):
        await cli_commands_in_thread(cfg, args)  # `creditgate` exits 1 on it
    got = out.read_bytes()
    assert (len(got), got.count(b"\n")) == (len(good), 1501)
    assert got == good
    assert partial_files(tmp_path) == []  # none left behind


def partial_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]
