"""Handlers of the invitee's routes: their pending invitations, to accept or decline.

A caller only ever reaches their own invitations: anyone else's id answers 404 exactly
like an id that never existed (:mod:`meter.accounts.invitations`).
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from gateway.admin_api import list_schemas as ls
from gateway.admin_api.http import Call, json_response
from meter.accounts import authz, invitations
from meter.accounts.pages import limit_of
from meter.store import Invitation
from meter.timestamps import iso


def _answer(inv: Invitation, status: Literal["active", "declined"]) -> ls.InvitationAnswer:
    return ls.InvitationAnswer(
        id=inv.id,
        kind=inv.kind,  # type: ignore[arg-type]  # checked by the schema
        workspace_id=inv.workspace_id,
        app_id=inv.app_id,
        role=inv.role,  # type: ignore[arg-type]
        status=status,
    )


async def list_invitations(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    q = call.query_as(ls.ListQuery)
    p = await invitations.listing(call.deps, uid, q.cursor, limit_of(q.limit))
    items = [
        ls.InvitationItem(
            id=o.invitation.id,
            kind=o.invitation.kind,  # type: ignore[arg-type]
            workspace_id=o.invitation.workspace_id,
            workspace_name=o.workspace_name,
            app_id=o.invitation.app_id,
            app_name=o.app_name,
            role=o.invitation.role,  # type: ignore[arg-type]
            invited_by=o.invitation.invited_by,
            inviter_name=o.inviter_name,
            inviter_email=o.inviter_email,
            created_at=iso(o.invitation.created_at) or "",
        )
        for o in p.items
    ]
    return json_response(ls.InvitationList(invitations=items, next_cursor=p.next_cursor))


async def accept_invitation(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    inv = await invitations.accept(call.deps, uid, call.path("invitation"))
    return json_response(_answer(inv, "active"))


async def decline_invitation(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    inv = await invitations.decline(call.deps, uid, call.path("invitation"))
    return json_response(_answer(inv, "declined"))
