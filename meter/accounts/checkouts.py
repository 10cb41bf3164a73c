"""Starting an owner's top-up: a checkout session with the payment provider.

The provider's API rate limit is one account's, shared by every tenant, so a workspace
may hold at most ``checkout_open_max`` checkouts ``creating`` or ``open`` at once (those
started within ``checkout_open_window_s``, the provider's session lifetime, after which
an unpaid session is expired there even if its event never came); one more is 409
``too_many_open_checkouts`` and never reaches the provider. Paid, expired and failed
checkouts free their place. What follows the session: :mod:`meter.accounts.payments`.
"""

from __future__ import annotations

from config.money import format_amount
from meter.accounts import credits
from meter.accounts.deps import Deps, audit, new_id
from meter.accounts.payments import (
    PROVIDER,
    CreateSession,
    PaymentsNotConfigured,
    ProviderError,
    SessionRequest,
    cents,
)
from meter.errors import Conflict, InvalidInput
from meter.store import Checkout, Workspace


async def start_checkout(
    d: Deps,
    actor: str,
    ws: Workspace,
    amount: str,
    *,
    app_id: str | None,
    create: CreateSession | None,
) -> Checkout:
    """Start an owner's top-up: a checkout session with the provider, funds to come."""
    if ws.type != "standard":
        raise Conflict(
            f"workspace {ws.id} is enterprise: usage is invoiced, not prepaid",
            code="postpaid_workspace",
        )
    micros = credits.parse_topup(d, amount)
    if app_id is not None:
        app = await d.store.get_app(app_id)
        if app is None or app.workspace_id != ws.id:
            raise InvalidInput("app_id", f"no app {app_id} in workspace {ws.id}")
    if create is None:
        raise PaymentsNotConfigured("the payment provider is not configured")
    now = d.now_ms()
    co = Checkout(
        id=new_id("co"),
        workspace_id=ws.id,
        app_id=app_id,
        amount=micros,
        currency=d.settings.checkout_currency,
        provider=PROVIDER,
        status="creating",
        created_by=actor,
        created_at=now,
    )
    cap, window_s = d.settings.checkout_open_max, d.settings.checkout_open_window_s
    if not await d.store.create_checkout_within(co, cap, since=now - int(window_s * 1000)):
        raise Conflict(
            f"workspace {ws.id} has {cap} checkouts open with the payment provider: "
            f"complete one, or start another once an unpaid one expires (within "
            f"{window_s / 3600:g} h of its start)",
            code="too_many_open_checkouts",
        )
    request = SessionRequest(
        checkout_id=co.id,
        workspace_id=ws.id,
        app_id=app_id,
        amount_cents=cents(micros),
        currency=co.currency,
        success_url=d.settings.checkout_success_url,
        cancel_url=d.settings.checkout_cancel_url,
    )
    try:
        session = await create(request)
        if session.amount_total not in (None, request.amount_cents):
            raise ProviderError(f"the provider's session charges {session.amount_total} cents")
    except ProviderError:
        await d.store.set_checkout_status(co.id, "failed", only_from=("creating",))
        raise
    await d.store.open_checkout(co.id, session.id, session.url)
    after = {"checkout_id": co.id, "amount": format_amount(micros), "app_id": app_id}
    await audit(d, actor, "checkout.create", f"workspace:{ws.id}", None, after)
    opened = await d.store.get_checkout(co.id)
    assert opened is not None
    return opened
