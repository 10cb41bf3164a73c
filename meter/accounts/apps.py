"""Apps (bots) of a workspace: creation, settings, collaborators and ownership.

The store holds the app; ``projection.put_app`` writes what ``admit.lua`` reads on every
call (product, free-credit use, suspension, upstream URL), so a change takes effect on
every gateway worker with the next message. Every change is audited.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from config.catalog import PRODUCTS
from meter.accounts import channel_secrets, invitations, projection, rebuild
from meter.accounts.deps import Deps, announce, audit, check_reachable, check_text
from meter.errors import Conflict, Forbidden, InvalidInput, NotFound
from meter.redis_layer import keys
from meter.store import App, NotMember, Workspace

log = logging.getLogger(__name__)
UPDATABLE = frozenset({"use_free_credits", "upstream_url", "suspended"})


def new_app_id(ws_id: str) -> str:
    """``<workspace>_<random suffix>``: admission finds the workspace without a lookup."""
    app_id = f"{ws_id}_{secrets.token_hex(6)}"
    assert keys.APP_RE.fullmatch(app_id), app_id
    return app_id


async def project_app(d: Deps, app: App) -> bool:
    """Write the app's live configuration and channel secrets to Redis, and tell the
    workers' caches.

    Redis without the workspace: the workspace is rebuilt whole from the store (this app
    included). Found there by then (another path rebuilt it, from a read of the store
    that may predate this change), the app is written as below. Redis without the app
    alone: it is written again when its balance is surely zero (no funds were ever tied
    to it); otherwise its balance cannot be known under live traffic and it is left to
    ``creditgate reconcile --apply`` (logged); ``False`` then, and when a lost workspace
    could not be rebuilt yet.
    """
    ws_id = app.workspace_id
    if not await d.redis.hexists(keys.ws_key(ws_id), "type"):
        outcome = await rebuild.rebuild_workspace(
            d.store, d.redis, d.settings, d.catalog, ws_id, now_s=d.clock()
        )
        if outcome != "present":  # rebuilt here, after this change: as the store holds it
            await announce(d, app.id)
            return outcome != "refused"
    if not await d.redis.exists(keys.app_key(ws_id, app.id)) and await d.store.ledger_entries(
        ws_id, app_id=app.id
    ):
        log.error(
            "redis lost app %s (funds are tied to it): not written again automatically, its "
            "balance is unknown under live traffic; run `creditgate reconcile --apply` "
            "(traffic stopped)",
            app.id,
        )
        return False
    await _put_latest(d, app)
    await channel_secrets.project_app_channels(d.store, d.redis, app.id)
    await announce(d, app.id)
    return True


async def _put_latest(d: Deps, app: App) -> None:
    """Write ``app`` (as the store held it when written) to Redis, then again as the
    store holds it now, until the two agree: concurrent changes of one app (a former
    owner's, landed before a handover, and the new owner's) reach Redis in any order,
    and the projection written last must not be the older one. Whoever writes Redis
    last reads the store after that write, so Redis ends as the store ends."""
    for _ in range(channel_secrets.PASSES):
        await projection.put_app(
            d.redis,
            app.id,
            product=app.product,
            use_free_credits=app.use_free_credits,
            suspended=app.suspended,
            upstream_url=app.upstream_url,
            shadow=app.shadow,
        )
        latest = await d.store.get_app(app.id)
        if latest is None or latest == app:
            return
        app = latest
    log.warning("app %s kept changing while projected; the projection check repairs it", app.id)


def app_dict(app: App) -> dict[str, Any]:
    return {
        "name": app.name,
        "product": app.product,
        "owner_id": app.owner_id,
        "upstream_url": app.upstream_url,
        "use_free_credits": app.use_free_credits,
        "suspended": app.suspended,
        "shadow": app.shadow,
    }


async def create_app(
    d: Deps, owner_id: str, ws: Workspace, name: str, product: str, upstream_url: str | None
) -> App:
    """An app owned by ``owner_id``; enterprise workspaces only for licensed products.

    A workspace holds at most ``max_apps_per_workspace`` apps, whoever owns them
    (counted and created in one step); one more is 409 ``too_many_apps``. An owner who
    is no longer a member when the app is written (removed meanwhile) gets
    :class:`NotFound` for the workspace, as any non-member does."""
    name = check_text("name", name)
    if product not in PRODUCTS:
        raise InvalidInput("product", f"must be one of {', '.join(PRODUCTS)}")
    if upstream_url is not None:
        await check_reachable(d, "upstream_url", upstream_url, ws.id)
    if ws.type == "enterprise":
        licensed = {li.product for li in await d.store.get_licences(ws.id)}
        if product not in licensed:
            raise Forbidden(
                f"workspace {ws.id} holds no licence for {product}", code="product_not_licensed"
            )
    app = App(
        id=new_app_id(ws.id),
        workspace_id=ws.id,
        name=name,
        product=product,
        owner_id=owner_id,
        created_at=d.now_ms(),
        upstream_url=upstream_url,
    )
    cap = d.settings.max_apps_per_workspace
    try:
        created = await d.store.create_app_within(app, cap)
    except NotMember:  # removed meanwhile: answered as the route answers a non-member
        raise NotFound("workspace", ws.id) from None
    if not created:
        raise Conflict(
            f"workspace {ws.id} already holds {cap} apps: the limit is {cap} per workspace "
            "(setting max_apps_per_workspace); ask the operator to raise it",
            code="too_many_apps",
        )
    await project_app(d, app)
    await audit(d, f"user:{owner_id}", "app.create", f"app:{app.id}", None, app_dict(app))
    return app


async def set_shadow(d: Deps, actor: str, app: App, on: bool) -> App:
    """Shadow mode on or off (an operator's action: see meter/accounts/authz.py ``app.shadow``)."""
    changed = await d.store.update_app(app.id, shadow=on)
    if changed is None:
        raise NotFound("app", app.id)
    was, updated = changed
    await project_app(d, updated)
    await audit(d, actor, "app.shadow", f"app:{app.id}", {"shadow": was.shadow}, {"shadow": on})
    return updated


async def update_app(
    d: Deps, actor: str, app: App, changes: dict[str, Any], *, owner: str | None
) -> App:
    """Change ``use_free_credits``, ``upstream_url`` (``None`` clears it) or ``suspended``.

    ``owner``: the app owner the caller's authorization relied on (``None``: none, the
    operator or workspace owner); the write is made only while they still own the app,
    else :class:`~meter.store.OwnerChanged` and nothing changes (every app write takes
    it alike)."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "cannot be changed")
    if changes.get("upstream_url") is not None:
        await check_reachable(d, "upstream_url", changes["upstream_url"], app.workspace_id)
    if not changes:
        return app
    changed = await d.store.update_app(app.id, expect_owner=owner, **changes)
    if changed is None:
        raise NotFound("app", app.id)
    was, updated = changed  # "before": what this change replaced (read under its lock)
    await project_app(d, updated)
    before = {k: app_dict(was)[k] for k in changes}
    after = {k: app_dict(updated)[k] for k in changes}
    await audit(d, actor, "app.update", f"app:{app.id}", before, after)
    return updated


async def remove_collaborator(
    d: Deps, actor: str, app: App, user_id: str, *, owner: str | None
) -> None:
    """Take a collaborator off the app, or withdraw their pending invitation; 404 if
    they are neither. ``owner``: as for :func:`update_app`."""
    await invitations.withdraw(d, actor, "app", app.id, user_id, owner=owner)


async def transfer(d: Deps, actor: str, app: App, user_id: str, *, owner: str | None) -> App:
    """Hand the app to another user of its workspace, who gets all the owner's rights.
    ``owner``: as for :func:`update_app` (a former owner cannot give away an app that
    was handed over meanwhile)."""
    # Membership alone decides (an unknown user is no member): the answer must not tell
    # an unknown user id from a known one.
    if not await d.store.is_member(app.workspace_id, user_id):
        raise InvalidInput("user_id", f"{user_id} is not a member of workspace {app.workspace_id}")
    # Already theirs: answered as the store holds it now (the app the route read may
    # have been handed over since, to someone else or to them).
    latest = await d.store.get_app(app.id)
    if latest is None:
        raise NotFound("app", app.id)
    if user_id == latest.owner_id:
        return latest
    try:  # checked again in the transfer's own step: a removal may race it
        return await invitations.transfer(d, actor, app, user_id, owner=owner)
    except NotMember:
        raise InvalidInput(
            "user_id", f"{user_id} is not a member of workspace {app.workspace_id}"
        ) from None
