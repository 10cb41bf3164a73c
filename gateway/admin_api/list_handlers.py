"""Handlers of the console's lists and removals: workspaces, apps, members,
collaborators, upgrade requests (and their decline), and a user's API tokens."""

from __future__ import annotations

from dataclasses import asdict
from typing import TypeVar

from aiohttp import web

from gateway.admin_api import list_schemas as ls
from gateway.admin_api.account_handlers import request_as
from gateway.admin_api.http import Call, json_response
from meter.accounts import apps, authz, invitations, tokens, upgrade_requests, workspaces
from meter.accounts.authz import TOKEN_PREFIX
from meter.accounts.pages import decode, limit_of, page
from meter.store import ApiToken, Person, UpgradeRequest
from meter.timestamps import iso

P = TypeVar("P", ls.MemberItem, ls.CollaboratorItem)


def _people(item: type[P], people: list[Person]) -> list[P]:
    """Members or collaborators as their list shows them (an invitee: no email, no name);
    role and status are checked against the item's choices."""
    return [item.model_validate(asdict(m)) for m in people]


def _paging(call: Call) -> tuple[str | None, int]:
    q = call.query_as(ls.ListQuery)
    return q.cursor, limit_of(q.limit)


async def list_workspaces(call: Call) -> web.Response:
    cursor, limit = _paging(call)
    key = decode("workspaces", cursor, (int, str))
    uid = None if call.principal.operator else authz.require_user(call.principal)
    rows = await call.deps.store.workspaces_page(
        uid, after=(key[0], key[1]) if key else None, limit=limit + 1
    )
    p = page("workspaces", rows, limit, lambda r: (r[0].created_at, r[0].id))
    items = [
        ls.WorkspaceItem(
            id=ws.id,
            name=ws.name,
            type=ws.type,
            owner_id=ws.owner_id,
            created_at=iso(ws.created_at) or "",
            role=role,  # type: ignore[arg-type]  # one of the roles the query names
        )
        for ws, role in p.items
    ]
    return json_response(ls.WorkspaceList(workspaces=items, next_cursor=p.next_cursor))


async def list_apps(call: Call) -> web.Response:
    ws = call.workspace
    # The access policy found the caller a collaborator who is not a member: their apps.
    only = call.principal.user_id if "collaborator" in call.roles else None
    cursor, limit = _paging(call)
    key = decode("apps", cursor, (int, str))
    rows = await call.deps.store.apps_page(
        ws.id, collaborator=only, after=(key[0], key[1]) if key else None, limit=limit + 1
    )
    p = page("apps", rows, limit, lambda a: (a.created_at, a.id))
    uid = call.principal.user_id
    collab = set(await call.deps.store.collaborating_apps(ws.id, uid)) if uid else set()
    items = []
    for a in p.items:
        if call.principal.operator:
            role = "operator"
        elif a.owner_id == uid:
            role = "owner"
        elif ws.owner_id == uid:
            role = "workspace_owner"
        elif a.id in collab:
            role = "collaborator"
        else:
            role = "member"
        items.append(
            ls.AppItem(
                id=a.id,
                workspace_id=a.workspace_id,
                name=a.name,
                product=a.product,  # type: ignore[arg-type]  # checked on creation
                owner_id=a.owner_id,
                suspended=a.suspended,
                use_free_credits=a.use_free_credits,
                created_at=iso(a.created_at) or "",
                role=role,  # type: ignore[arg-type]
            )
        )
    return json_response(ls.AppList(apps=items, next_cursor=p.next_cursor))


async def list_members(call: Call) -> web.Response:
    ws = call.workspace
    cursor, limit = _paging(call)
    key = decode("members", cursor, (str,))
    rows = await call.deps.store.members_page(
        ws.id,
        ws.owner_id,
        after=key[0] if key else None,
        limit=limit + 1,
        since=invitations.open_since(call.deps),
    )
    p = page("members", rows, limit, lambda m: (m.user_id,))
    items = _people(ls.MemberItem, p.items)
    return json_response(ls.MemberList(members=items, next_cursor=p.next_cursor))


async def remove_member(call: Call) -> web.Response:
    ws = call.workspace
    await workspaces.remove_member(call.deps, call.principal.actor, ws, call.path("user"))
    return web.Response(status=204)


async def list_collaborators(call: Call) -> web.Response:
    app = call.app
    cursor, limit = _paging(call)
    key = decode("collaborators", cursor, (str,))
    rows = await call.deps.store.collaborators_page(
        app.id,
        after=key[0] if key else None,
        limit=limit + 1,
        since=invitations.open_since(call.deps),
    )
    p = page("collaborators", rows, limit, lambda m: (m.user_id,))
    items = _people(ls.CollaboratorItem, p.items)
    return json_response(ls.CollaboratorList(collaborators=items, next_cursor=p.next_cursor))


async def remove_collaborator(call: Call) -> web.Response:
    app = call.app
    await apps.remove_collaborator(
        call.deps, call.principal.actor, app, call.path("user"), owner=call.grant.relied_owner
    )
    return web.Response(status=204)


def request_item(r: UpgradeRequest) -> ls.UpgradeRequestItem:
    return request_as(ls.UpgradeRequestItem, r)


async def list_workspace_upgrade_requests(call: Call) -> web.Response:
    ws = call.workspace
    cursor, limit = _paging(call)
    key = decode("upgrade-requests", cursor, (int, str))
    rows = await call.deps.store.upgrade_requests_page(
        ws.id, after=(key[0], key[1]) if key else None, limit=limit + 1
    )
    p = page("upgrade-requests", rows, limit, lambda r: (r.created_at, r.id))
    items = [request_item(r) for r in p.items]
    return json_response(ls.UpgradeRequestPage(requests=items, next_cursor=p.next_cursor))


async def list_open_upgrade_requests(call: Call) -> web.Response:
    """Every workspace's open request, oldest first: the operators' queue, page by page."""
    cursor, limit = _paging(call)
    key = decode("open-upgrade-requests", cursor, (int, str))
    rows = await call.deps.store.open_upgrade_requests_page(
        after=(key[0], key[1]) if key else None, limit=limit + 1
    )
    p = page("open-upgrade-requests", rows, limit, lambda r: (r.created_at, r.id))
    items = [request_item(r) for r in p.items]
    return json_response(ls.UpgradeRequestPage(requests=items, next_cursor=p.next_cursor))


async def decline_upgrade_request(call: Call) -> web.Response:
    authz.require_operator(call.principal)
    body = call.parsed(ls.UpgradeDecline)
    req = await upgrade_requests.decline_upgrade(
        call.deps, call.principal.actor, call.path("request"), body.reason
    )
    return json_response(request_item(req))


def _token_item(t: ApiToken, current: str | None) -> ls.TokenItem:
    return ls.TokenItem(
        id=t.id,
        name=t.name,
        hint=t.hint,
        prefix=TOKEN_PREFIX,
        created_at=iso(t.created_at) or "",
        current=t.id == current,
    )


async def list_tokens(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    cursor, limit = _paging(call)
    p = await tokens.listing(call.deps, uid, cursor, limit)
    items = [_token_item(t, call.principal.token_id) for t in p.items]
    return json_response(ls.TokenList(tokens=items, next_cursor=p.next_cursor))


async def create_token(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    body = call.parsed(ls.TokenCreate)
    row, secret = await tokens.create(call.deps, uid, body.name)
    item = _token_item(row, call.principal.token_id)
    return json_response(ls.TokenCreated(**item.model_dump(), token=secret), 201)


async def revoke_token(call: Call) -> web.Response:
    uid = authz.require_user(call.principal)
    await tokens.revoke(call.deps, uid, call.path("token"))
    return web.Response(status=204)
