"""An overdue owner notification goes at once when the owner saves the webhook again,
through the admin application's own API and delivery loop: real sockets, a real SQLite
store, a real receiver on loopback. Nothing is timed: the ``asyncio.timeout`` only ends
the test if the notification never comes (as on the code that gave up on it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.webhooks import WebhookOptions
from tests.support.adminkit import admin_server, admin_settings
from tests.support.receiver import receiver
from tests.support.settings import OPERATOR_TOKEN

SECRET = "owner-webhook-secret-0123456789"
GUARD_S = 30


async def test_saving_the_webhook_sends_an_overdue_notification_at_once(
    redis_url: str, tmp_path: Path
) -> None:
    # One failure makes a notification overdue; its next try would be an hour later.
    settings = admin_settings(redis_url, tmp_path, webhook_max_attempts=1)
    opts = WebhookOptions(poll_s=0.05, backoff_base_s=3600, backoff_cap_s=3600)
    async with admin_server(settings, webhooks=opts) as admin, receiver() as rec:
        token, ws = await admin.owner_workspace("a", "Acme")
        hook = {"url": rec.url, "secret": SECRET}
        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        rec.fail, rec.fail_with = 1, 503
        funds = {"amount": "100.00", "reference": "bank-1"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        async with asyncio.timeout(GUARD_S):
            # the store's rows are written by the delivery loop's task
            while not (evs := await admin.store.list_events(ws)) or evs[0].attempts < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        [ev] = evs
        assert ev.delivered_at is None
        assert ev.next_attempt_at is not None  # kept, due again in about an hour
        assert await admin.store.pending_events() == 1
        assert await admin.store.overdue_events(1) == 1

        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        async with asyncio.timeout(GUARD_S):
            while len(rec.valid(SECRET)) < 2:
                rec.arrived.clear()
                await rec.arrived.wait()
        assert [r.json["id"] for r in rec.got] == [ev.event_id, ev.event_id]
        async with asyncio.timeout(GUARD_S):  # marked delivered just after the answer
            while await admin.store.pending_events():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await admin.store.overdue_events(1) == 0


async def test_saving_the_webhook_wakes_overdue_notifications_at_most_once_an_hour(
    redis_url: str, tmp_path: Path
) -> None:
    """Re-saving the webhook (the same one, or alternating URLs) resent the whole overdue
    backlog each time: an unthrottled "POST everything now" button (481 PUTs in 5 s made
    440 POSTs). After one wake, further saves leave overdue notifications to their hourly
    retry. Shown without timing: a notification queued after the saves arrives alone, and
    a woken one (due since it was created, older) would have gone first."""
    settings = admin_settings(redis_url, tmp_path, webhook_max_attempts=1)
    opts = WebhookOptions(poll_s=0.05, backoff_base_s=3600, backoff_cap_s=3600)
    async with admin_server(settings, webhooks=opts) as admin, receiver() as rec:
        token, ws = await admin.owner_workspace("a", "Acme")
        hook = {"url": rec.url, "secret": SECRET}
        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        rec.fail, rec.fail_with = 10**9, 400  # a receiver that always refuses
        for i in range(3):
            funds = {"amount": "100.00", "reference": f"bank-{i}"}
            await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        async with asyncio.timeout(GUARD_S):
            while await admin.store.overdue_events(1, ws) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)  # wakes them
        async with asyncio.timeout(GUARD_S):
            while await admin.store.overdue_events(2, ws) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        sent = len(rec.got)
        assert sent == 6
        other = {"url": rec.url + "?other=1", "secret": SECRET}
        for n in range(6):  # the same webhook, another URL, another secret: none wakes
            again = [hook, other, {**hook, "secret": SECRET + str(n)}][n % 3]
            await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, again)
        await admin.ok("PUT", f"/v1/workspaces/{ws}/webhook", token, hook)
        funds = {"amount": "100.00", "reference": "bank-last"}
        await admin.ok("POST", f"/v1/workspaces/{ws}/funds", OPERATOR_TOKEN, funds)
        async with asyncio.timeout(GUARD_S):
            while len(rec.got) == sent:
                rec.arrived.clear()
                await rec.arrived.wait()
        assert [r.json["id"] for r in rec.got[sent:]] == [f"{ws}:funds:bank-last"]
