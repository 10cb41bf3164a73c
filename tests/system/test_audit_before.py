"""The audit's "before" of an app or channel write is what that write replaced: read in
the write's own transaction, with the app's row locked, never a read made before it
that a concurrent write may have made stale (the old code read it before the write,
outside its transaction: the audit trail then skipped the racing change, audited a
removal that removed nothing, or none for one that removed a secret).

Real sockets, a real redis-server, SQLite and PostgreSQL stores. The race is forced, not
timed: the store's write is held after the route decided; the other write lands
meanwhile; then the first is let go.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.held_call import held_call, started
from tests.support.settings import OPERATOR_TOKEN
from tests.system.test_owner_race import SECRET, Scene
from tests.system.test_owner_race import scene as scene

FIRST = "http://127.0.0.1:9/first"  # the scene's app's upstream
OWNER, ALICE = "http://127.0.0.1:9/ws-owner", "http://127.0.0.1:9/alice"
WEB = {"channel": "web", "scheme": "jwt_hs256"}


async def audited(s: Scene, action: str) -> list[tuple[Any, Any]]:
    """``(before, after)`` of the app's audit entries of ``action``, oldest first."""
    entries = await s.admin.store.list_audit(target=f"app:{s.app}")
    return [(e.before, e.after) for e in reversed(entries) if e.action == action]


async def meanwhile(s: Scene, method: str, held: Any, *then: tuple[str, str, Any]) -> Any:
    """Run ``held`` (Alice's call) with ``store.<method>`` held; while it is, the
    workspace owner's calls ``then`` land. Returns the held call's answer."""
    async with held_call(s.admin.store, method) as reached:
        task = asyncio.ensure_future(held)
        await started(task, reached)
        for verb, path, body in then:
            await s.admin.ok(verb, path, s.owner, body)
    status, body = await task
    assert 200 <= status < 300, body
    return body


async def test_a_patch_audits_the_value_it_replaced(scene: Scene) -> None:
    """Alice's PATCH is held; the workspace owner's lands first: Alice's replaced the
    owner's upstream, not the one her request's route read."""
    s = scene
    path = f"/v1/apps/{s.app}"
    alice = s.admin.api("PATCH", path, s.alice[1], {"upstream_url": ALICE})
    await meanwhile(s, "update_app", alice, ("PATCH", path, {"upstream_url": OWNER}))
    assert await audited(s, "app.update") == [
        ({"upstream_url": FIRST}, {"upstream_url": OWNER}),
        ({"upstream_url": OWNER}, {"upstream_url": ALICE}),
    ]


async def test_a_channel_set_audits_the_secret_it_replaced(scene: Scene) -> None:
    """The channel has no secret when Alice's set is held; the owner's set lands first:
    Alice's replaced a secret (the old code audited it as a first one)."""
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    alice = s.admin.api("PUT", path, s.alice[1], {"secret": SECRET})
    await meanwhile(s, "put_app_channel", alice, ("PUT", path, {"secret": "o" * 40}))
    after = {**WEB, "notify_secret": False}
    assert await audited(s, "channel.set") == [(None, after), (WEB, after)]


async def test_a_removal_that_removed_nothing_is_not_audited(scene: Scene) -> None:
    """Alice's removal is held; the owner's removes the secret first: one removal, one
    audit entry (the old code audited Alice's too, which deleted nothing)."""
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    await s.admin.ok("PUT", path, s.alice[1], {"secret": SECRET})
    await meanwhile(s, "delete_app_channel", s.admin.api("DELETE", path, s.alice[1]),
                    ("DELETE", path, None))  # fmt: skip
    assert await audited(s, "channel.remove") == [(WEB, None)]


async def test_a_removal_audits_the_secret_it_removed(scene: Scene) -> None:
    """No secret when Alice's removal is held; the owner sets one meanwhile, which
    Alice's removal then deletes: that removal is audited (the old code, having read no
    secret before, audited none: a secret gone without a trace)."""
    s = scene
    path = f"/v1/apps/{s.app}/channels/web"
    await meanwhile(s, "delete_app_channel", s.admin.api("DELETE", path, s.alice[1]),
                    ("PUT", path, {"secret": SECRET}))  # fmt: skip
    assert await s.admin.store.list_app_channels(s.app) == []
    assert await audited(s, "channel.remove") == [(WEB, None)]


async def workspace_audited(s: Scene, action: str) -> list[tuple[Any, Any]]:
    entries = await s.admin.store.list_audit(target=f"workspace:{s.ws}")
    return [(e.before, e.after) for e in reversed(entries) if e.action == action]


async def test_a_threshold_audits_the_value_it_replaced(scene: Scene) -> None:
    s = scene
    path = f"/v1/workspaces/{s.ws}"
    mine = s.admin.api("PATCH", path, s.owner, {"low_balance_threshold": "5.00"})
    await meanwhile(s, "set_low_balance_threshold", mine,
                    ("PATCH", path, {"low_balance_threshold": "7.00"}))  # fmt: skip
    assert await workspace_audited(s, "workspace.update") == [
        ({"low_balance_threshold": None}, {"low_balance_threshold": 7_000_000}),
        ({"low_balance_threshold": 7_000_000}, {"low_balance_threshold": 5_000_000}),
    ]


async def test_a_webhook_audits_the_url_it_replaced(scene: Scene) -> None:
    s = scene
    path, first, other = f"/v1/workspaces/{s.ws}/webhook", FIRST + "/a", FIRST + "/b"
    mine = s.admin.api("PUT", path, s.owner, {"url": first, "secret": SECRET})
    await meanwhile(s, "set_webhook", mine, ("PUT", path, {"url": other, "secret": SECRET}))
    assert await workspace_audited(s, "webhook.set") == [
        ({"url": None}, {"url": other}),
        ({"url": other}, {"url": first}),
    ]


async def test_an_upgrade_audits_the_licences_it_replaced(scene: Scene) -> None:
    s = scene
    path = f"/v1/workspaces/{s.ws}/upgrade"
    one = {"usage_limit": 10, "per_minute": 5, "per_hour": 50}
    two = {"usage_limit": 20, "per_minute": 5, "per_hour": 50}
    mine = s.admin.api("POST", path, OPERATOR_TOKEN, {"licences": {"search": two}})
    # meanwhile() makes its calls as the workspace owner; the upgrade is the operator's
    async with held_call(s.admin.store, "upgrade_workspace") as reached:
        task = asyncio.ensure_future(mine)
        await started(task, reached)
        await s.admin.ok("POST", path, OPERATOR_TOKEN, {"licences": {"search": one}})
    status, body = await task
    assert status == 200, body
    assert await workspace_audited(s, "workspace.upgrade") == [
        ({"type": "standard", "licences": {}}, {"type": "enterprise", "licences": {"search": one}}),
        (
            {"type": "enterprise", "licences": {"search": one}},
            {"type": "enterprise", "licences": {"search": two}},
        ),
    ]
