"""The streamed sessions CSV stays what its caller may read, and cannot be held open.

A client reads the first bytes of a large CSV and stops reading (a tiny receive buffer:
the server soon waits on a full socket). Meanwhile its token is revoked, or it is
removed from the workspace, and new sessions are flushed; when it reads on, it gets no
row flushed after that and no final chunk (the server logged the cut). A client that
stops reading is cut off (tiny ``export_stream_timeout_s``: the cut observed in the
log). A ``to`` in the future lists no session flushed while the stream runs, and a
stream whose caller keeps its access is whole.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from gateway.webhooks import WebhookOptions
from meter.store import SessionRow
from tests.support.adminkit import Admin, admin_server, admin_settings

HOUR = 3_600_000
DAY = 24 * HOUR
N = 20_000  # about 18 MB of CSV: far more than the socket buffers hold
END = b"0\r\n\r\n"
HANG_GUARD_S = 120.0  # only against a hang: nothing is asserted on time
Reader = tuple[asyncio.StreamReader, bytes]


def _range(now_ms: int) -> tuple[int, str]:
    start = now_ms - 5 * DAY
    return start, f"from={_iso(now_ms - 10 * DAY)}&to={_iso(now_ms + 30 * DAY)}"


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


def _rows(ws: str, app: str, prefix: str, start: int, n: int) -> list[SessionRow]:
    pad = "u" * 900  # big rows: the socket buffers fill with few of them
    return [
        SessionRow(ws, f"{prefix}{i:08d}", app, "web", f"{prefix}{pad}{i}", "automation",
                   start + i * 1000, start + i * 1000 + 5, 1, 200_000, 1)
        for i in range(n)
    ]  # fmt: skip


async def _flush(admin: Admin, ws: str, batch: int, rows: list[SessionRow]) -> None:
    await admin.store.write_flush_batch(
        f"{ws}:sr:{batch}:1", ws, "sr", rows[0].start_ms, session_rows=rows
    )


class Cuts(list[str]):
    """The cuts the stream logged; ``logged`` set at the first."""

    def __init__(self) -> None:
        super().__init__()
        self.logged = asyncio.Event()


@contextmanager
def _cuts() -> Iterator[Cuts]:
    """The cuts the stream logs, as they happen."""
    seen = Cuts()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())
            seen.logged.set()

    logger = logging.getLogger("gateway.admin_api.csv_stream")
    handler = Seen(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


@asynccontextmanager
async def _slow_reader(admin: Admin, path: str, auth: str) -> AsyncIterator[Reader]:
    """A CSV request whose client has read its first 2,000 bytes of body (then reads no
    more until the test reads on with :func:`_read_on`)."""
    u = urlsplit(admin.url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((u.hostname, u.port))
    s.setblocking(False)
    r, w = await asyncio.open_connection(sock=s)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Accept: text/csv\r\n\r\n".encode())
    first = await r.readuntil(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), first
    assert b"Transfer-Encoding: chunked" in first
    head = await r.readexactly(2000)
    try:
        yield r, head
    finally:
        w.close()


async def _read_on(reader: Reader) -> bytes:
    """The body read so far and the rest, up to the final chunk or the end."""
    r, head = reader
    data = bytearray(head)
    async with asyncio.timeout(HANG_GUARD_S):
        while chunk := await r.read(1 << 16):
            data += chunk
            if data.endswith(END):
                break
    return bytes(data)


async def test_a_revoked_token_reads_no_further(redis_url: str, tmp_path: Path) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as admin:
        owner, ws = await admin.owner_workspace()
        app = await admin.new_app(owner, ws, "https://bot.example.com/hook")
        leaked = (await admin.ok("POST", "/v1/tokens", owner, {"name": "leaked"}))["token"]
        listed = await admin.ok("GET", "/v1/tokens", leaked)
        leaked_id = next(t["id"] for t in listed["tokens"] if t["current"])
        start, rng = _range(int(time.time() * 1000))
        await _flush(admin, ws, 1, _rows(ws, app, "old", start, N))
        path = f"/v1/workspaces/{ws}/sessions?{rng}"
        with _cuts() as cuts:
            async with _slow_reader(admin, path, f"Authorization: Bearer {leaked}\r\n") as r:
                await admin.ok("DELETE", f"/v1/tokens/{leaked_id}", owner)
                # begun before the stream (not cut by its snapshot), flushed after the
                # revocation: the keyset pages still to come would list them
                late_start = int(time.time() * 1000) - HOUR
                await _flush(admin, ws, 2, _rows(ws, app, "late", late_start, 5))
                data = await _read_on(r)
        assert b"late0000" not in data
        assert not data.endswith(END)  # cut: the client cannot take it for whole
        assert data.count(b"old0") < N
        assert any("may no longer read it" in c for c in cuts), cuts


async def test_a_removed_member_reads_no_further(redis_url: str, tmp_path: Path) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as admin:
        owner_id, owner = await admin.new_user("owner")
        ws = await admin.new_workspace(owner, "Acme")
        member = await admin.new_user("member")
        await admin.join(ws, owner, member)
        mid, mtok = member
        app = await admin.new_app(mtok, ws, "https://bot.example.com/hook")
        start, rng = _range(int(time.time() * 1000))
        await _flush(admin, ws, 1, _rows(ws, app, "old", start, N))
        path = f"/v1/workspaces/{ws}/sessions?{rng}"
        with _cuts() as cuts:
            async with _slow_reader(admin, path, f"Authorization: Bearer {mtok}\r\n") as r:
                await admin.ok("POST", f"/v1/apps/{app}/transfer", owner, {"user_id": owner_id})
                await admin.ok("DELETE", f"/v1/workspaces/{ws}/members/{mid}", owner)
                late_start = int(time.time() * 1000) - HOUR
                await _flush(admin, ws, 2, _rows(ws, app, "late", late_start, 5))
                data = await _read_on(r)
        assert b"late0000" not in data
        assert not data.endswith(END)
        assert any("may no longer read it" in c for c in cuts), cuts


async def test_a_client_that_stops_reading_is_cut_off(redis_url: str, tmp_path: Path) -> None:
    settings = admin_settings(redis_url, tmp_path, export_stream_timeout_s=0.05)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as admin:
        owner, ws = await admin.owner_workspace()
        app = await admin.new_app(owner, ws, "https://bot.example.com/hook")
        start, rng = _range(int(time.time() * 1000))
        await _flush(admin, ws, 1, _rows(ws, app, "old", start, N))
        path = f"/v1/workspaces/{ws}/sessions?{rng}"
        with _cuts() as cuts:
            async with _slow_reader(admin, path, f"Authorization: Bearer {owner}\r\n") as r:
                # the cut observed while the client reads nothing
                await asyncio.wait_for(cuts.logged.wait(), HANG_GUARD_S)
                data = await _read_on(r)
        assert "the client took no part within 0.05 s" in cuts[0], cuts
        assert not data.endswith(END)
        assert data.count(b"old0") < N


async def test_a_kept_stream_is_whole_and_a_snapshot(redis_url: str, tmp_path: Path) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as admin:
        owner, ws = await admin.owner_workspace()
        app = await admin.new_app(owner, ws, "https://bot.example.com/hook")
        start, rng = _range(int(time.time() * 1000))
        await _flush(admin, ws, 1, _rows(ws, app, "old", start, N))
        path = f"/v1/workspaces/{ws}/sessions?{rng}"
        with _cuts() as cuts:
            async with _slow_reader(admin, path, f"Authorization: Bearer {owner}\r\n") as r:
                # sessions begun after the stream did (the range ends in 30 days)
                future = int(time.time() * 1000) + HOUR
                await _flush(admin, ws, 2, _rows(ws, app, "late", future, 5))
                data = await _read_on(r)
        assert data.endswith(END)
        assert cuts == []
        assert b"late0000" not in data
        assert data.count(b"old0") == N
        # they are in the range: the JSON page, no snapshot, lists them
        page = await admin.ok("GET", f"{path}&order=desc&limit=5", owner)
        assert [x["billing_session_id"][:4] for x in page["sessions"]] == ["late"] * 5
