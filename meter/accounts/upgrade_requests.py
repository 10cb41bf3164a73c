"""Owners' requests for the enterprise upgrade, and operators declining them.

A workspace has at most one open request: until an operator grants it (the upgrade,
:func:`meter.accounts.workspaces.upgrade`) or declines it, asking again for the same
products with the same message answers the open request (a retried or repeated
submit), and asking for anything else is 409 ``upgrade_request_open``. So one owner
cannot grow the operators' queue (and its list) without bound.
"""

from __future__ import annotations

from meter.accounts.deps import Deps, audit, check_free_text, check_text, new_id
from meter.accounts.workspaces import check_products
from meter.errors import Conflict, InvalidInput, NotFound
from meter.store import UpgradeRequest, Workspace

MAX_MESSAGE = 2000


async def request_upgrade(
    d: Deps, actor: str, ws: Workspace, products: list[str], message: str | None
) -> tuple[UpgradeRequest, bool]:
    """Record an owner's request to become enterprise for ``products``; returns it and
    whether it is new (``False``: this same request was already open)."""
    prods = check_products("products", products)
    if message is not None:
        message = check_free_text("message", message)  # line ends as newlines
        if len(message) > MAX_MESSAGE:
            raise InvalidInput("message", f"longer than {MAX_MESSAGE} characters")
    req = UpgradeRequest(
        id=new_id("r"), workspace_id=ws.id, products=prods, created_at=d.now_ms(), message=message
    )
    if not await d.store.create_upgrade_request_if_none_open(req):
        pending = await d.store.open_upgrade_request(ws.id)
        if pending is not None and _same(pending, req):
            return pending, False
        shown = f" ({pending.id})" if pending is not None else ""
        raise Conflict(
            f"workspace {ws.id} has an open upgrade request{shown}: an operator grants or "
            "declines it before another can be made",
            code="upgrade_request_open",
        )
    after = {"id": req.id, "products": list(prods), "message": message}
    await audit(d, actor, "upgrade_request.create", f"workspace:{ws.id}", None, after)
    return req, True


def _same(a: UpgradeRequest, b: UpgradeRequest) -> bool:
    return sorted(a.products) == sorted(b.products) and a.message == b.message


async def decline_upgrade(d: Deps, actor: str, request_id: str, reason: str) -> UpgradeRequest:
    """An operator declines an open upgrade request, saying why (the owner sees it)."""
    reason = check_text("reason", reason, MAX_MESSAGE, name=False)
    req = await d.store.get_upgrade_request(request_id)
    if req is None:
        raise NotFound("upgrade request", request_id)
    if not await d.store.decline_upgrade_request(request_id, reason, d.now_ms()):
        raise Conflict(f"request {request_id} is {req.status}, not open", code="request_not_open")
    await audit(d, actor, "upgrade_request.decline", f"workspace:{req.workspace_id}",
                {"id": request_id, "status": req.status},
                {"id": request_id, "status": "declined", "reason": reason})  # fmt: skip
    declined = await d.store.get_upgrade_request(request_id)
    assert declined is not None
    return declined
