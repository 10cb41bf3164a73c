"""Consent to membership: adding a member to a workspace or a collaborator to an app only
invites them; they join when they accept (:mod:`meter.store.invitations`).

Until then a pending invitee has no access at all (they are in neither ``memberships``
nor ``collaborators``) and lists show them by user id alone: their email and name are
theirs to reveal by accepting. Inviting never looks the user up, so an unknown user id is
answered exactly like a known one (no oracle of which ids exist); nobody can accept such
an invitation. At most :data:`MAX_PENDING` invitations of one workspace or app are open
at a time, so an owner cannot flood users with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meter.accounts.deps import Deps, audit, new_id
from meter.accounts.pages import Page, decode, page
from meter.errors import Conflict, InvalidInput, NotFound
from meter.store import App, Invitation, OpenInvitation, Workspace
from meter.store.models import ROLES, Role

MAX_PENDING = 100  # open invitations per workspace and per app


@dataclass(frozen=True, slots=True)
class Invited:
    """What an invitation call did."""

    status: Literal["invited", "active"]  # active: the user already belongs
    created: bool  # this call opened the invitation
    role: Role | None = None  # apps: the role (offered, or held when active)


async def _invite(d: Deps, actor: str, inv: Invitation, what: str) -> Invited:
    outcome, before = await d.store.invite(inv, MAX_PENDING)
    role: Role | None = inv.role  # type: ignore[assignment]  # checked by the caller
    if outcome == "gone":
        raise NotFound(inv.kind, inv.target)
    if outcome == "full":
        raise Conflict(
            f"{MAX_PENDING} invitations to {what} are pending; wait for answers or withdraw "
            "some (DELETE the pending member or collaborator)",
            code="too_many_invitations",
        )
    target = f"{inv.kind}:{inv.target}"
    after = {"user_id": inv.user_id, "role": inv.role}
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
    d: Deps, actor: str, inviter: str, app: App, user_id: str, role: str
) -> Invited:
    """Invite ``user_id`` to the app as ``developer``, ``tester`` or ``viewer``; an active
    collaborator's role is changed at once, a pending invitation's offered role too."""
    if role not in ROLES:
        raise InvalidInput("role", f"must be one of {', '.join(ROLES)}")
    if user_id == app.owner_id:
        raise InvalidInput("user_id", "the app owner cannot also be a collaborator")
    inv = Invitation(
        new_id("i"), "app", app.id, app.workspace_id, app.id, user_id, role, inviter, d.now_ms()
    )
    return await _invite(d, actor, inv, f"app {app.id}")


async def cancel(d: Deps, actor: str, target: str, user_id: str) -> bool:
    """Withdraw a pending invitation (``target``: ``workspace:<id>`` or ``app:<id>``)."""
    if not await d.store.cancel_invitation(target.partition(":")[2], user_id):
        return False
    await audit(d, actor, "invitation.cancel", target, {"user_id": user_id}, None)
    return True


async def listing(d: Deps, user_id: str, cursor: str | None, limit: int) -> Page[OpenInvitation]:
    """The user's own pending invitations, oldest first."""
    after = decode("invitations", cursor, (int, str))
    rows = await d.store.user_invitations_page(
        user_id, after=(after[0], after[1]) if after else None, limit=limit + 1
    )
    return page("invitations", rows, limit, lambda o: (o.invitation.created_at, o.invitation.id))


async def accept(d: Deps, user_id: str, invitation_id: str) -> Invitation:
    """Join as the invitation offers. Anyone else's invitation, or one already answered or
    withdrawn, is :class:`NotFound`: an invitation id tells nothing to anyone else."""
    inv = await d.store.accept_invitation(invitation_id, user_id)
    if inv is None:
        raise NotFound("invitation", invitation_id)
    joined = "member.add" if inv.kind == "workspace" else "collaborator.add"
    after = {"user_id": user_id, "role": inv.role, "invitation": inv.id}
    await audit(d, f"user:{user_id}", joined, f"{inv.kind}:{inv.target}", None, after)
    return inv


async def decline(d: Deps, user_id: str, invitation_id: str) -> Invitation:
    """Refuse the invitation (it is deleted; the owner may invite again)."""
    inv = await d.store.decline_invitation(invitation_id, user_id)
    if inv is None:
        raise NotFound("invitation", invitation_id)
    before = {"user_id": user_id, "role": inv.role, "invitation": inv.id}
    await audit(d, f"user:{user_id}", "invitation.decline", f"{inv.kind}:{inv.target}",
                before, None)  # fmt: skip
    return inv
