"""One tenant's webhook cannot hold up another's, through the admin application's own
delivery loop: real sockets, a real SQLite store, real receivers on loopback.

Tenant A's receiver accepts connections and never answers (and its requests do not time
out during the test); A has a backlog of events, all older than tenant B's. B's
``funds.added`` must still arrive while A's events wait. Nothing is timed: the
``asyncio.timeout`` only ends the test if B's notification never comes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from meter.store import OutboxEvent, now_ms
from meter.store.outbox import insert_events
from tests.support.adminkit import admin_server, admin_settings
from tests.support.receiver import hanging_receiver, receiver
from tests.support.settings import OPERATOR_TOKEN

SECRET = "owner-webhook-secret-0123456789"


async def test_a_silent_receiver_with_a_backlog_delays_no_other_tenant(
    redis_url: str, tmp_path: Path
) -> None:
    # Long enough that no request to A times out while the test runs.
    settings = admin_settings(redis_url, tmp_path, webhook_timeout_s=120.0)
    # The receivers close first: A's hanging request then fails at once, and the
    # application stops without waiting for its timeout.
    async with admin_server(settings) as admin, hanging_receiver() as hang, receiver() as rec:
        hook_a, hook_b = ({"url": r.url, "secret": SECRET} for r in (hang, rec))
        token_a, ws_a = await admin.owner_workspace("a", "Slow")
        token_b, ws_b = await admin.owner_workspace("b", "Fast")
        await admin.ok("PUT", f"/v1/workspaces/{ws_a}/webhook", token_a, hook_a)
        await admin.ok("PUT", f"/v1/workspaces/{ws_b}/webhook", token_b, hook_b)
        # 120 free events of A (as refused messages of 120 apps make), all at once.
        start = now_ms() - 60_000
        backlog = [
            OutboxEvent(ws_a, f"{ws_a}:inactive:{i}", "app.inactive", {"app": str(i)}, start + i)
            for i in range(120)
        ]
        async with admin.store.transaction() as c:
            await insert_events(c, backlog)
        await hang.arrived.wait()  # A's delivery has begun (and hangs)

        funds = {"amount": "100.00", "reference": "fair-1"}
        await admin.ok("POST", f"/v1/workspaces/{ws_b}/funds", OPERATOR_TOKEN, funds)
        async with asyncio.timeout(30):
            while not rec.got:
                rec.arrived.clear()
                await rec.arrived.wait()
        assert rec.types() == ["funds.added"]
        assert len(rec.valid(SECRET)) == 1
        # A: still its first request in flight, none of its events delivered or tried.
        assert hang.connections == 1
        waiting = await admin.store.list_events(ws_a, limit=200)
        assert len(waiting) == 120
        assert {(e.delivered_at, e.attempts) for e in waiting} == {(None, 0)}
        assert await admin.store.pending_events() == 120
