"""``creditgate notifications`` as a process, on SQLite and PostgreSQL: what waits for
delivery, by workspace and oldest first, ``--overdue`` for those failed
``WEBHOOK_MAX_ATTEMPTS`` times or more (exit 1 if any), and a tenant's text printed
escaped, never as terminal control characters."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from meter.store import OutboxEvent, Store, User, Workspace, open_store
from tests.support.serving import CREDITGATE, creditgate_env

T0 = 1_796_290_000_000  # ms: 2026-12-03 09:26:40 UTC
HOSTILE = "HTTP 503 \x1b[2J\x1b]0;pwned\x07 \u202eevil\r\nfake line"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    return f"sqlite:///{tmp_path}/store.db"


async def _fill(store: Store) -> None:
    """wsb: e1 failed 12 times (overdue at the default 12), e2 failed twice, e3 never
    tried; wsa: e4 failed 13 times, e5 delivered."""
    await store.migrate()
    await store.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
    for ws in ("wsa", "wsb"):
        await store.create_workspace(Workspace(ws, ws.upper(), "u0001", 0))
    fails = {"e1": 12, "e2": 2, "e3": 0, "e4": 13, "e5": 0}
    for n, (name, count) in enumerate(fails.items()):
        ws = "wsa" if name in ("e4", "e5") else "wsb"
        ev = OutboxEvent(ws, f"{ws}:{name}", "funds.added", {"id": name}, T0 + n * 1000)
        assert await store.enqueue(ev)
        got = await store.get_event(ev.event_id)
        assert got is not None
        assert got.id is not None
        for i in range(count):
            error = HOSTILE if name == "e1" else f"HTTP 50{i % 4}"
            assert await store.mark_failed(got.id, error, T0 + 3_600_000)
        if name == "e5":
            assert await store.mark_delivered(got.id, at=T0 + 5000)


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = creditgate_env(store_url=url)
    return subprocess.run(
        [CREDITGATE, "notifications", *args], env=env, capture_output=True, text=True, timeout=60
    )


def _events(stdout: str) -> list[list[str]]:
    """The rows under the header: workspace, event, type, date, time, attempts, ..."""
    lines = stdout.splitlines()
    assert lines[0].split()[:3] == ["workspace", "event", "type"]
    return [line.split() for line in lines[1:]]


def test_notifications_lists_what_waits_and_overdue_exits_1(url: str) -> None:
    async def fill() -> None:
        store = open_store(url)
        try:
            await _fill(store)
            # The store's own listing, as the command reads it.
            assert [e.event_id for e in await store.undelivered_events()] == [
                "wsa:e4", "wsb:e1", "wsb:e2", "wsb:e3"
            ]  # fmt: skip
            three = await store.undelivered_events(min_attempts=2, workspace_id="wsb")
            assert [(e.event_id, e.attempts) for e in three] == [("wsb:e1", 12), ("wsb:e2", 2)]
            assert len(await store.undelivered_events(limit=1)) == 1
        finally:
            await store.close()

    asyncio.run(fill())
    every = _run(url)
    assert every.returncode == 0, every.stderr
    rows = _events(every.stdout)
    assert [(r[0], r[1], r[5]) for r in rows] == [
        ("wsa", "wsa:e4", "13"),
        ("wsb", "wsb:e1", "12"),
        ("wsb", "wsb:e2", "2"),
        ("wsb", "wsb:e3", "0"),
    ]
    assert rows[0][3:5] == ["2026-12-03", "09:26:43"]  # created, UTC
    assert rows[3][-1] == "-"  # never tried: no error
    assert "4 undelivered notification(s)" in every.stderr
    # Escaped: no escape sequence, bell, bidi override or line break of the tenant's.
    for raw in ("\x1b", "\x07", "\u202e", "\r"):
        assert raw not in every.stdout
    assert len(every.stdout.splitlines()) == 5
    assert "\\x1b[2J\\x1b]0;pwned\\x07 \\u202eevil\\r\\nfake line" in every.stdout

    overdue = _run(url, "--overdue")
    assert overdue.returncode == 1
    assert [r[1] for r in _events(overdue.stdout)] == ["wsa:e4", "wsb:e1"]
    one = _run(url, "--overdue", "--workspace", "wsa")
    assert (one.returncode, [r[1] for r in _events(one.stdout)]) == (1, ["wsa:e4"])
    none = _run(url, "--overdue", "--workspace", "wsc")
    assert (none.returncode, _events(none.stdout)) == (0, [])
    capped = _run(url, "--limit", "2")
    assert [r[1] for r in _events(capped.stdout)] == ["wsa:e4", "wsb:e1"]
    assert "the first 2: --limit shows more" in capped.stderr
    assert _run(url, "--limit", "0").returncode == 2
