"""Consent to membership: adding a member to a workspace or a collaborator to an app only
invites them; they join when they accept (:mod:`meter.store.invitations`).

Until then a pending invitee has no access at all (they are in neither ``memberships``
nor ``collaborators``) and lists show them by user id alone: their email and name are
theirs to reveal by accepting. Inviting never looks the user up, so an unknown user id is
answered exactly like a known one (no oracle of which ids exist); nobody can accept such
an invitation.

Invitations expire after ``invitation_ttl_s`` (settings). At most :data:`MAX_PENDING` of
one workspace or app and :data:`MAX_BY_INVITER` made by one user are open at a time, so
an owner cannot flood users with them; and one user holds at most :data:`MAX_PER_INVITEE`
open invitations from one workspace (to it and its apps together). 409 past any of them:
an invitation that was not made is never answered as made. The invitee's cap is per
workspace, not global, so that nobody can fill it for another workspace (one workspace
and its apps inviting a user a hundred times used to silence every later inviter of that
user); its 409 tells the inviter only about the invitations of their own workspace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meter.accounts.deps import Deps, audit, new_id
from meter.accounts.pages import Page, decode, page
from meter.errors import Conflict, InvalidInput, NotFound
from meter.store import App, Caps, Invitation, OpenInvitation, Workspace
from meter.store.invitations import Kind
from meter.store.models import ROLES, Role

MAX_PENDING = 100  # open invitations per workspace and per app
MAX_BY_INVITER = 200  # open invitations made by one user, all targets together
MAX_PER_INVITEE = 100  # open invitations one user holds from one workspace and its apps
OWNER_NO_COLLABORATOR = "the app owner cannot also be a collaborator"


@dataclass(frozen=True, slots=True)
class Invited:
    """What an invitation call did."""

    status: Literal["invited", "active"]  # active: the user already belongs
    created: bool  # this call opened the invitation
    role: Role | None = None  # apps: the role (offered, or held when active)


def open_since(d: Deps) -> int:
    """Invitations made after this instant (ms) are open; older ones have expired."""
    return d.now_ms() - int(d.settings.invitation_ttl_s * 1000)


def swept_before(since: int, d: Deps) -> int:
    """Invitations made at or before this instant (ms) may be deleted: a lifetime past
    their expiry (``since``: :func:`open_since`), the margin for the clocks and lifetimes
    of other processes (decision 0009)."""
    return since - int(d.settings.invitation_ttl_s * 1000)


async def _invite(
    d: Deps, actor: str, inv: Invitation, what: str, owner: str | None = None
) -> Invited:
    caps = Caps(MAX_PENDING, MAX_BY_INVITER, MAX_PER_INVITEE)
    since = open_since(d)
    outcome, before = await d.store.invite(inv, caps, since, swept_before(since, d), owner)
    role: Role | None = inv.role  # type: ignore[assignment]  # checked by the caller
    if outcome == "gone":
        raise NotFound(inv.kind, inv.target)
    if outcome == "owner":  # handed to the invitee after the route read the app
        raise InvalidInput("user_id", OWNER_NO_COLLABORATOR)
    if outcome in ("full", "inviter_full", "invitee_full"):
        many = f"{MAX_PENDING} invitations to {what} are"
        if outcome == "inviter_full":
            many = f"{MAX_BY_INVITER} invitations you made are"
        elif outcome == "invitee_full":
            many = (
                f"{MAX_PER_INVITEE} invitations of {inv.user_id} to workspace "
                f"{inv.workspace_id} and its apps are"
            )
        raise Conflict(
            f"{many} pending; wait for answers or withdraw some (DELETE the pending member "
            "or collaborator)",
            code="too_many_invitations",
        )
    target = f"{inv.kind}:{inv.target}"
    after = {"user_id": inv.user_id, "role": inv.role, "invitation": inv.id}
    prior = {"user_id": inv.user_id, "role": before} if outcome != "created" else None
    if outcome == "created":
        await audit(d, actor, "invitation.create", target, None, after)
    elif before != inv.role:  # a role changed: the offered one, or a collaborator's
        action = "collaborator.add" if outcome == "active" else "invitation.update"
        await audit(d, actor, action, target, prior, after)
    status: Literal["invited", "active"] = "active" if outcome == "active" else "invited"
    return Invited(status, outcome == "created", role)


async def invite_member(d: Deps, actor: str, inviter: str, ws: Workspace, user_id: str) -> Invited:
    """Invite ``user_id`` into the workspace (``active``: already a member, the owner too)."""
    inv = Invitation(
        new_id("i"), "workspace", ws.id, ws.id, None, user_id, None, inviter, d.now_ms()
    )
    return await _invite(d, actor, inv, f"workspace {ws.id}")


async def invite_collaborator(
    d: Deps, actor: str, inviter: str, app: App, user_id: str, role: str, *, owner: str | None
) -> Invited:
    """Invite ``user_id`` to the app as ``developer``, ``tester`` or ``viewer``; an active
    collaborator's role is changed at once; a pending invitation with another role is
    replaced by a new one (the invitee accepts only what they were shown). ``owner``: the
    app owner the authorization relied on (``apps.update_app``): a former owner's offer
    never outlives the handover that withdrew the app's invitations."""
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    if user_id == app.owner_id:
        raise InvalidInput("user_id", OWNER_NO_COLLABORATOR)
    inv = Invitation(
        new_id("i"), "app", app.id, app.workspace_id, app.id, user_id, role, inviter, d.now_ms()
    )
    return await _invite(d, actor, inv, f"app {app.id}", owner)


async def withdraw(
    d: Deps, actor: str, kind: Kind, target_id: str, user_id: str, *, owner: str | None = None
) -> None:
    """Take the user out of the workspace or off the app and withdraw their invitation to
    it, in one step; out of a workspace, off its apps too (collaborations and invitations:
    each audited on its app, ``reason`` the removal). :class:`NotFound` if they had none.
    ``owner``: an app's owner the authorization relied on (``apps.update_app``)."""
    done = await d.store.withdraw(kind, target_id, user_id, open_since(d), expect_owner=owner)
    target, who = f"{kind}:{target_id}", {"user_id": user_id}
    if done.active and kind == "workspace":
        await audit(d, actor, "member.remove", target, who, None)
    elif done.active:
        await audit(d, actor, "collaborator.remove", target, who | {"role": done.role}, None)
    if done.invited:
        await audit(d, actor, "invitation.cancel", target, who, None)
    why = who | {"reason": "member.remove", "workspace_id": target_id}
    for app_id, role in done.apps:
        await audit(d, actor, "collaborator.remove", f"app:{app_id}", why | {"role": role}, None)
    for app_id in done.app_invitations:
        await audit(d, actor, "invitation.cancel", f"app:{app_id}", why, None)
    if not (done.active or done.invited or done.apps or done.app_invitations):
        raise NotFound("member" if kind == "workspace" else "collaborator", user_id)


async def transfer(d: Deps, actor: str, app: App, user_id: str, *, owner: str | None) -> App:
    """Make ``user_id`` the app's owner; every invitation to the app (the previous owner's
    offers) is withdrawn in the same step. ``owner``: as for ``apps.update_app``."""
    updated, withdrawn, previous = await d.store.transfer_app(app.id, user_id, expect_owner=owner)
    if updated is None:
        raise NotFound("app", app.id)
    target = f"app:{app.id}"
    # Whom the store took it from (a handover may have landed since the route read it).
    before, after = {"owner_id": previous}, {"owner_id": user_id}
    await audit(d, actor, "app.transfer", target, before, after)
    if withdrawn:
        reason = {"reason": "app.transfer", "user_ids": withdrawn}
        await audit(d, actor, "invitation.cancel", target, reason, None)
    return updated


async def listing(d: Deps, user_id: str, cursor: str | None, limit: int) -> Page[OpenInvitation]:
    """The user's own pending invitations, oldest first."""
    after = decode("invitations", cursor, (int, str))
    rows = await d.store.user_invitations_page(
        user_id, open_since(d), after=(after[0], after[1]) if after else None, limit=limit + 1
    )
    return page("invitations", rows, limit, lambda o: (o.invitation.created_at, o.invitation.id))


async def accept(d: Deps, user_id: str, invitation_id: str) -> Invitation:
    """Join as the invitation offers. Anyone else's invitation, or one already answered or
    withdrawn, is :class:`NotFound`: an invitation id tells nothing to anyone else."""
    inv = await d.store.accept_invitation(invitation_id, user_id, open_since(d))
    if inv is None:
        raise NotFound("invitation", invitation_id)
    joined = "member.add" if inv.kind == "workspace" else "collaborator.add"
    after = {"user_id": user_id, "role": inv.role, "invitation": inv.id}
    await audit(d, f"user:{user_id}", joined, f"{inv.kind}:{inv.target}", None, after)
    return inv


async def decline(d: Deps, user_id: str, invitation_id: str) -> Invitation:
    """Refuse the invitation (it is deleted; the owner may invite again)."""
    inv = await d.store.decline_invitation(invitation_id, user_id, open_since(d))
    if inv is None:
        raise NotFound("invitation", invitation_id)
    before = {"user_id": user_id, "role": inv.role, "invitation": inv.id}
    await audit(d, f"user:{user_id}", "invitation.decline", f"{inv.kind}:{inv.target}",
                before, None)  # fmt: skip
    return inv
