"""Accounts: users, workspaces, members, the enterprise upgrade and webhook settings
(the requests for the upgrade: :mod:`meter.accounts.upgrade_requests`).

Each change writes the durable store first (the source of truth), then the Redis
projection that ``admit.lua`` reads on every call (so a change reaches every gateway
worker at once), announces it on ``keys.CHANGES`` for caches, and is audited with who,
what, when and the before/after values. Authorization is checked by the caller
(:mod:`meter.accounts.authz`); these functions check the semantics of their input and raise
:class:`InvalidInput` naming the field before anything is changed.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import replace

from config.catalog import PRODUCTS
from meter.accounts import authz, invitations, projection, rebuild
from meter.accounts.channel_secrets import PASSES
from meter.accounts.deps import (
    EMAIL_RE,
    Deps,
    announce,
    audit,
    check_reachable,
    check_text,
    new_id,
)
from meter.accounts.notifier import lease_ms
from meter.errors import Conflict, InvalidInput, NotFound
from meter.redis_layer import keys
from meter.store import (
    CapReached,
    DuplicateKey,
    LedgerEntry,
    Licence,
    OwnsApps,
    User,
    Workspace,
)

log = logging.getLogger(__name__)


def free_reference(ws_id: str) -> str:
    """The ledger reference (and Redis grant marker) of a workspace's free credits."""
    return f"free:{ws_id}"


# -------------------------------------------------------------------------------- users


async def create_user(d: Deps, actor: str, email: str, name: str) -> tuple[User, str]:
    """Create a user; returns it with its token (shown once, stored as a hash).

    The email is kept in one canonical form (NFKC, lower case), so its variants (``Å``
    and ``å``, composed and decomposed, full-width letters) name one user: free credits
    are granted once per user. Sub-addresses (``ada+1@``) stay distinct mailboxes."""
    email = check_text("email", unicodedata.normalize("NFKC", email).lower(), 254)
    if not EMAIL_RE.fullmatch(email):
        raise InvalidInput("email", "must be an email address such as ada@example.com")
    name = check_text("name", name)
    if await d.store.get_user_by_email(email) is not None:
        raise Conflict(f"a user with email {email} exists", code="email_taken", field="email")
    token = authz.new_token()
    user = User(new_id("u"), email, name, authz.token_hash(token), d.now_ms())
    try:
        await d.store.create_user(user, token_hint=token[-4:])
    except DuplicateKey:
        raise Conflict(
            f"a user with email {email} exists", code="email_taken", field="email"
        ) from None
    await audit(d, actor, "user.create", f"user:{user.id}", None, {"email": email, "name": name})
    return user, token


# --------------------------------------------------------------------------- workspaces


async def create_workspace(d: Deps, owner_id: str, name: str) -> Workspace:
    """A standard workspace owned by ``owner_id``, with the free-credit grant if due.

    The grant is due once per user (``free_credits_once_per_user``, decided by the
    store's unique key on the user, so concurrent creations grant once); later
    workspaces of the same user start without free credits and without an expiry.
    The workspace, the owner's membership and the grant's ledger entry commit in one
    transaction; the live balance is then granted in Redis with the same reference,
    so a repeated grant is a no-op on both sides. A user owns at most
    ``max_workspaces_per_user`` workspaces (counted and created in one step); one more
    is 409 ``too_many_workspaces``.
    """
    name = check_text("name", name)
    now = d.now_ms()
    ws = Workspace(
        id=new_id(),
        name=name,
        owner_id=owner_id,
        created_at=now,
        type="standard",
        free_expires_at=now + int(d.settings.free_credit_validity_s * 1000),
    )
    amount = d.settings.free_credits
    grant = None
    if amount > 0:
        grant = LedgerEntry(
            workspace_id=ws.id,
            kind="grant_free",
            amount=amount,
            reference=free_reference(ws.id),
            created_at=now,
            detail={"expires_at": ws.free_expires_at},
        )
    cap = d.settings.max_workspaces_per_user
    try:
        granted = await d.store.create_workspace(
            ws, grant=grant, once_per_user=d.settings.free_credits_once_per_user, cap=cap
        )
    except CapReached:
        raise Conflict(
            f"you already own {cap} workspaces: the limit is {cap} per user (setting "
            "max_workspaces_per_user); use one you own, or ask the operator to raise it",
            code="too_many_workspaces",
        ) from None
    if not granted:
        ws = replace(ws, free_expires_at=None)
    await project_workspace(d, ws, new=True)
    after = {
        "name": name,
        "owner_id": owner_id,
        "type": "standard",
        "free_credits": amount if granted else 0,
    }
    await audit(d, f"user:{owner_id}", "workspace.create", f"workspace:{ws.id}", None, after)
    return ws


async def project_workspace(d: Deps, ws: Workspace, *, new: bool = False) -> None:
    """Write a workspace's plan, licences and low-balance threshold to Redis (idempotent).

    A workspace Redis does not hold (new, or lost) is rebuilt whole from the store
    (:mod:`meter.accounts.rebuild`): balances are the ledger minus the usage the store
    holds, so a change after a loss never hands out spent credit again. ``new``: a
    workspace just created (its free grant, if any, is all its ledger holds).

    Otherwise what is written is the workspace as the store holds it (``ws`` only names
    it: a caller's copy, read before a concurrent change, would undo that change in
    Redis), read again after each write until it stands: of two changes projected in
    either order, Redis ends as the store ends (as ``apps._put_latest``).
    """
    outcome = await rebuild.rebuild_workspace(
        d.store, d.redis, d.settings, d.catalog, ws.id, now_s=d.clock(), new=new
    )
    if outcome == "present":
        await _put_latest(d, ws.id)
    await announce(d, ws.id)


async def remove_member(d: Deps, actor: str, ws: Workspace, user_id: str) -> None:
    """Take a user out of the workspace, or withdraw their pending invitation, and off its
    apps (their collaborations and invitations there, in the same step). The owner stays;
    a member who still owns apps must hand them over first (their apps would otherwise
    have no reachable owner)."""
    if user_id == ws.owner_id:
        raise Conflict("the workspace owner cannot be removed", code="owner_cannot_be_removed")
    try:  # the store checks the apps in the removal's own step (a creation may race it)
        await invitations.withdraw(d, actor, "workspace", ws.id, user_id)
    except OwnsApps as owned:
        names = ", ".join(owned.app_ids[:5])
        raise Conflict(
            f"{user_id} owns apps of this workspace ({names}); transfer them first",
            code="member_owns_apps",
        ) from None


async def _put_latest(d: Deps, ws_id: str) -> None:
    """Write the workspace's configuration as the store holds it, then read it again,
    until what was written still stands (:func:`project_workspace`)."""
    written: tuple[Workspace | None, list[Licence]] | None = None
    for _ in range(PASSES):
        latest = (await d.store.get_workspace(ws_id), await d.store.get_licences(ws_id))
        ws, rows = latest
        if ws is None or latest == written:
            return
        lic = {r.product: projection.Licence(r.usage_limit, r.per_minute, r.per_hour) for r in rows}
        await projection.put_workspace(
            d.redis, ws_id, plan=ws.type, catalog=d.catalog, licences=lic,
            low_threshold=ws.low_balance_threshold, owner=ws.owner_id,
        )  # fmt: skip
        written = latest
    log.warning(
        "workspace %s kept changing while projected; the projection check repairs it", ws_id
    )


WAKE_EVERY_S = 3600.0
"""Saving the webhook wakes a workspace's overdue notifications at most this often (the
notifier's default backoff cap: as often as they are retried anyway)."""


async def set_webhook(d: Deps, actor: str, ws: Workspace, url: str, secret: str) -> None:
    """Where the workspace's owner notifications go, and the key they are signed with."""
    if not 16 <= len(secret) <= 256:
        raise InvalidInput("secret", "must be 16-256 characters")
    if not secret.isprintable():  # NUL included, which PostgreSQL cannot store in text
        raise InvalidInput("secret", "must be printable characters")
    await check_reachable(d, "url", url, ws.id)
    # Saving it again is how an owner says the receiver works now: overdue events go at
    # once, at most once per WAKE_EVERY_S (else re-saving resends the backlog on demand, to
    # any URL named), and not those a notifier may be sending (due within a lease from now).
    overdue, most = 0, d.settings.webhook_max_attempts
    if await d.store.overdue_events(most, ws.id) and await d.redis.set(
        keys.webhook_wake_key(ws.id), 1, nx=True, px=int(WAKE_EVERY_S * 1000)
    ):
        overdue = most
    lease_end = d.now_ms() + lease_ms(d.settings.webhook_timeout_s)
    was = await d.store.set_webhook(ws.id, url, secret, overdue=overdue, lease_end_ms=lease_end)
    if was is None:
        raise NotFound("workspace", ws.id)
    before = {"url": was.webhook_url}  # what this write replaced (read under its lock)
    await audit(d, actor, "webhook.set", f"workspace:{ws.id}", before, {"url": url})


async def set_low_balance_threshold(
    d: Deps, actor: str, ws: Workspace, micros: int | None
) -> Workspace:
    """The owner's own low-balance alert threshold (``None``: back to the default)."""
    if micros is not None and micros < 0:
        raise InvalidInput("low_balance_threshold", "must not be negative")
    was = await d.store.set_low_balance_threshold(ws.id, micros)
    if was is None:
        raise NotFound("workspace", ws.id)
    updated = replace(was, low_balance_threshold=micros)
    await project_workspace(d, updated)
    before = {"low_balance_threshold": was.low_balance_threshold}  # what this replaced
    after = {"low_balance_threshold": micros}
    await audit(d, actor, "workspace.update", f"workspace:{ws.id}", before, after)
    return updated


# ------------------------------------------------------------------------------ upgrade


def check_products(field: str, products: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not products:
        raise InvalidInput(field, "name at least one product")
    for i, p in enumerate(products):
        if p not in PRODUCTS:
            raise InvalidInput(f"{field}.{i}", f"must be one of {', '.join(PRODUCTS)}")
    if len(set(products)) != len(products):
        raise InvalidInput(field, "lists a product twice")
    return tuple(products)


async def upgrade(
    d: Deps, actor: str, ws: Workspace, licences: Mapping[str, projection.Licence]
) -> Workspace:
    """Make the workspace enterprise with exactly these per-product licences.

    Grants its open upgrade requests. ``admit.lua`` reads the licences from Redis on
    every call, so traffic to an unlicensed product is refused from the next message.
    """
    check_products("licences", list(licences))
    for product, li in licences.items():
        if li.per_minute > li.per_hour:
            raise InvalidInput(f"licences.{product}.per_hour", "must be at least per_minute")
    rows = [
        Licence(ws.id, p, li.usage_limit, li.per_minute, li.per_hour) for p, li in licences.items()
    ]
    was = await d.store.upgrade_workspace(ws.id, rows)  # what it replaced, read under its lock
    if was is None:
        raise NotFound("workspace", ws.id)
    await project_workspace(d, replace(ws, type="enterprise"))
    after = {"type": "enterprise", "licences": {r.product: _licence_dict(r) for r in rows}}
    before = {"type": was[0], "licences": {li.product: _licence_dict(li) for li in was[1]}}
    await audit(d, actor, "workspace.upgrade", f"workspace:{ws.id}", before, after)
    updated = await d.store.get_workspace(ws.id)
    if updated is None:
        raise NotFound("workspace", ws.id)
    return updated


def _licence_dict(li: Licence) -> dict[str, int]:
    return {"usage_limit": li.usage_limit, "per_minute": li.per_minute, "per_hour": li.per_hour}
