"""Handlers of the app routes: create, read, change, collaborators, transfer, channels."""

from __future__ import annotations

import logging

from aiohttp import web
from redis.exceptions import RedisError

from gateway.admin_api import schemas as s
from gateway.admin_api.http import Call, json_response
from meter.accounts import apps, authz, channel_secrets, invitations
from meter.errors import MeteringUnavailable
from meter.store import App, AppChannel
from meter.timestamps import iso
from meter.usage.series import usage

log = logging.getLogger(__name__)
USAGE_DAYS = 30


async def app_usage(call: Call, app: App) -> s.AppUsageOut:
    """The app's counts over the last 30 days (no money: collaborators see this too)."""
    d = call.deps
    to_ms = d.now_ms()
    since = to_ms - USAGE_DAYS * 86_400_000
    live = True
    try:
        points = await usage(d.store, d.redis, app.workspace_id, since, to_ms, "month", app.id)
    except (RedisError, OSError, MeteringUnavailable) as exc:
        log.warning("app %s: redis unavailable, stored counts only: %r", app.id, exc)
        points = await usage(d.store, None, app.workspace_id, since, to_ms, "month", app.id)
        live = False
    return s.AppUsageOut(
        since=iso(since) or "",
        sessions=sum(p.sessions for p in points),
        requests=sum(p.requests for p in points),
        notifications=sum(p.notifications for p in points),
        messages=sum(p.messages for p in points),
        live=live,
    )


def manages(call: Call, app: App) -> bool:
    """Whether the caller manages the app (operator, app owner, workspace owner), so may
    see its upstream URL (its query may hold the bot's own credentials, and calling the
    bot directly skips the metering) and its collaborators (``collaborators.read``):
    a collaborator sees neither. ``call.roles`` are the roles on the app
    (``workspace_owner``) or, where the app was just created, in its workspace
    (``owner``); the app owner is read from ``app`` (a transfer just changed it)."""
    p = call.principal
    return (
        p.operator or app.owner_id == p.user_id or bool(call.roles & {"workspace_owner", "owner"})
    )


async def app_response(call: Call, app: App, status: int = 200) -> web.Response:
    """The app as the caller may see it: ``upstream_url`` null and ``collaborators`` left
    out unless the caller :func:`manages` it."""
    managing = manages(call, app)
    collaborators = (
        [
            s.CollaboratorOut(app_id=c.app_id, user_id=c.user_id, role=c.role)
            for c in await call.deps.store.list_collaborators(app.id)
        ]
        if managing
        else None
    )
    out = s.AppOut(
        id=app.id,
        workspace_id=app.workspace_id,
        name=app.name,
        product=app.product,  # type: ignore[arg-type]  # checked on creation
        owner_id=app.owner_id,
        upstream_url=app.upstream_url if managing else None,
        use_free_credits=app.use_free_credits,
        suspended=app.suspended,
        shadow=app.shadow,
        created_at=iso(app.created_at) or "",
        collaborators=collaborators,
        usage=await app_usage(call, app),
    )
    return json_response(out, status, exclude=frozenset() if managing else _MANAGERS_ONLY)


_MANAGERS_ONLY = frozenset({"collaborators"})


async def create_app(call: Call) -> web.Response:
    ws = call.workspace
    owner = authz.require_user(call.principal)
    body = call.parsed(s.AppCreate)
    app = await apps.create_app(call.deps, owner, ws, body.name, body.product, body.upstream_url)
    return await app_response(call, app, 201)


async def get_app(call: Call) -> web.Response:
    app = call.app
    return await app_response(call, app)


async def set_shadow(call: Call) -> web.Response:
    body = call.parsed(s.ShadowSet)
    updated = await apps.set_shadow(call.deps, call.principal.actor, call.app, body.shadow)
    return await app_response(call, updated)


async def patch_app(call: Call) -> web.Response:
    app = call.app
    body = call.parsed(s.AppPatch)
    changes = body.model_dump(include=body.model_fields_set)
    owner = call.grant.relied_owner
    updated = await apps.update_app(call.deps, call.principal.actor, app, changes, owner=owner)
    return await app_response(call, updated)


async def add_collaborator(call: Call) -> web.Response:
    app = call.app
    inviter = authz.require_user(call.principal)
    body = call.parsed(s.CollaboratorAdd)
    done = await invitations.invite_collaborator(
        call.deps,
        call.principal.actor,
        inviter,
        app,
        body.user_id,
        body.role,
        owner=call.grant.relied_owner,
    )
    out = s.CollaboratorOut(app_id=app.id, user_id=body.user_id, role=body.role, status=done.status)
    return json_response(out, 201)


async def transfer(call: Call) -> web.Response:
    app = call.app
    body = call.parsed(s.Transfer)
    owner = call.grant.relied_owner
    updated = await apps.transfer(call.deps, call.principal.actor, app, body.user_id, owner=owner)
    return await app_response(call, updated)


def channel_out(app_id: str, channel: str, ch: AppChannel | None) -> s.ChannelOut:
    """A channel's state; its secrets never leave the store."""
    scheme = ch.scheme if ch is not None else channel_secrets.scheme_of(channel)
    return s.ChannelOut(
        app_id=app_id,
        channel=channel,
        scheme=scheme,  # type: ignore[arg-type]  # one of channel_secrets' schemes
        enabled=ch is not None,
        notify=ch is not None
        and (ch.notify_secret_enc is not None or ch.scheme != "botframework_jwt"),
        updated_at=iso(ch.updated_at) if ch is not None else None,
    )


async def list_channels(call: Call) -> web.Response:
    app = call.app
    rows = await call.deps.store.list_app_channels(app.id)
    items = [channel_out(app.id, ch.channel, ch) for ch in rows]
    return json_response(s.ChannelList(items=items))


async def put_channel(call: Call) -> web.Response:
    app = call.app
    body = call.parsed(s.ChannelSet)
    channel = call.path("channel")
    ch = await channel_secrets.set_channel(
        call.deps,
        call.principal.actor,
        app,
        channel,
        body.secret,
        body.notify_secret,
        owner=call.grant.relied_owner,
    )
    return json_response(channel_out(app.id, channel, ch))


async def delete_channel(call: Call) -> web.Response:
    app = call.app
    channel = call.path("channel")
    owner = call.grant.relied_owner
    await channel_secrets.remove_channel(call.deps, call.principal.actor, app, channel, owner=owner)
    return json_response(channel_out(app.id, channel, None))
