"""Handlers of the account routes: users, workspaces, members, upgrade, webhook."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from config.money import format_amount, parse_amount
from gateway.admin_api import list_schemas as ls
from gateway.admin_api import schemas as s
from gateway.admin_api.http import Call, json_response
from meter.accounts import authz, invitations, projection, upgrade_requests, workspaces
from meter.store import UpgradeRequest, Workspace
from meter.timestamps import iso


async def workspace_out(call: Call, ws: Workspace) -> s.WorkspaceOut:
    licences = {
        li.product: s.LicenceOut(
            usage_limit=li.usage_limit, per_minute=li.per_minute, per_hour=li.per_hour
        )
        for li in await call.deps.store.get_licences(ws.id)
    }
    return s.WorkspaceOut(
        id=ws.id,
        name=ws.name,
        type=ws.type,
        owner_id=ws.owner_id,
        created_at=iso(ws.created_at) or "",
        free_credits_expire_at=iso(ws.free_expires_at),
        licences=licences,
        low_balance_threshold=(
            None if ws.low_balance_threshold is None else format_amount(ws.low_balance_threshold)
        ),
    )


# WorkspaceOut's fields that only the workspace owner and operators see (DESIGN: money
# figures); other members get the answer without them (left out: null means the default).
WORKSPACE_MONEY = frozenset({"free_credits_expire_at", "low_balance_threshold"})


def workspace_response(call: Call, out: s.WorkspaceOut, status: int = 200) -> web.Response:
    """``out`` as the caller may see it: its money figures (``WORKSPACE_MONEY``) only for
    the workspace owner and operators (DESIGN: plan & usage), left out for members."""
    p = call.principal
    money = p.operator or (p.user_id is not None and p.user_id == out.owner_id)
    return json_response(out, status, exclude=frozenset() if money else WORKSPACE_MONEY)


# An upgrade request answers as UpgradeRequestOut where it is made, as a list's item
# elsewhere: two published schemas (their OpenAPI differs), the same fields.
RequestSchema = TypeVar("RequestSchema", s.UpgradeRequestOut, ls.UpgradeRequestItem)


def request_as(schema: type[RequestSchema], req: UpgradeRequest) -> RequestSchema:
    return schema(
        id=req.id,
        workspace_id=req.workspace_id,
        products=list(req.products),
        message=req.message,
        status=req.status,
        created_at=iso(req.created_at) or "",
        decided_at=iso(req.decided_at),
        reason=req.reason,
    )


def request_out(req: UpgradeRequest) -> s.UpgradeRequestOut:
    return request_as(s.UpgradeRequestOut, req)


async def create_user(call: Call) -> web.Response:
    body = call.parsed(s.UserCreate)
    user, token = await workspaces.create_user(
        call.deps, call.principal.actor, body.email, body.name
    )
    out = s.UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        token=token,
        created_at=iso(user.created_at) or "",
    )
    return json_response(out, 201)


async def create_workspace(call: Call) -> web.Response:
    owner = authz.require_user(call.principal)
    body = call.parsed(s.WorkspaceCreate)
    ws = await workspaces.create_workspace(call.deps, owner, body.name)
    return workspace_response(call, await workspace_out(call, ws), 201)


async def get_workspace(call: Call) -> web.Response:
    ws = call.workspace
    return workspace_response(call, await workspace_out(call, ws))


async def patch_workspace(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(s.WorkspacePatch)
    if "low_balance_threshold" in body.model_fields_set:
        text = body.low_balance_threshold
        micros = None if text is None else parse_amount(text)
        ws = await workspaces.set_low_balance_threshold(call.deps, call.principal.actor, ws, micros)
    return workspace_response(call, await workspace_out(call, ws))


async def add_member(call: Call) -> web.Response:
    ws = call.workspace
    inviter = authz.require_user(call.principal)
    body = call.parsed(s.MemberAdd)
    done = await invitations.invite_member(
        call.deps, call.principal.actor, inviter, ws, body.user_id
    )
    out = s.MemberOut(
        workspace_id=ws.id, user_id=body.user_id, added=done.created, status=done.status
    )
    return json_response(out, 201 if done.created else 200)


async def upgrade(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(s.Upgrade)
    licences: dict[str, projection.Licence] = {
        product: projection.Licence(li.usage_limit, li.per_minute, li.per_hour)
        for product, li in body.licences.items()
    }
    updated = await workspaces.upgrade(call.deps, call.principal.actor, ws, licences)
    return workspace_response(call, await workspace_out(call, updated))


async def create_upgrade_request(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(s.UpgradeRequestCreate)
    req, created = await upgrade_requests.request_upgrade(
        call.deps, call.principal.actor, ws, list(body.products), body.message
    )
    # 200: this same request was already open (one open request per workspace).
    return json_response(request_out(req), 201 if created else 200)


async def set_webhook(call: Call) -> web.Response:
    ws = call.workspace
    body = call.parsed(s.WebhookSet)
    await workspaces.set_webhook(call.deps, call.principal.actor, ws, body.url, body.secret)
    return json_response(s.WebhookOut(workspace_id=ws.id, url=body.url, secret_set=True))
