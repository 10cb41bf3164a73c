"""Checkouts with the payment provider, the events it sent, and the free-grant claims.

Crediting a checkout is one transaction: the checkout becomes ``paid`` and the ledger
gets its top-up, keyed by ``checkout:<provider session id>`` (unique per workspace), so
redelivered or concurrent provider events credit a payment once. The same transaction
claims the payment's identifiers (:mod:`meter.store.claims`), as an operator's credit
by hand does (:meth:`Payments.credit_by_hand`): whichever commits first credits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from meter.store.claims import PROVIDER_PREFIXES, Holder, claim, hand_over, mark_by_hand
from meter.store.db import Row, StoreCore, dumps, loads, row_as
from meter.store.ledger import insert_ledger_entry
from meter.store.models import Checkout, CheckoutStatus, LedgerEntry
from meter.store.reversals import settle_pending

_COLS = (
    "id, workspace_id, app_id, amount, currency, provider, session_id, payment_intent, url, "
    "status, created_by, created_at, completed_at, detail"
)


_BY_REFERENCE = (
    f"SELECT {_COLS} FROM checkouts WHERE id = ? OR session_id = ? OR payment_intent = ?"
)
_OWN_ENTRY = "SELECT 1 AS x FROM ledger WHERE workspace_id = ? AND reference = ?"
_AMOUNT = "SELECT amount FROM ledger WHERE workspace_id = ? AND reference = ?"

CheckoutCredit = Literal[
    "credited", "already_credited", "credited_by_hand", "credited_by_hand_mismatch"
]


@dataclass(frozen=True, slots=True)
class ManualCredit:
    """What :meth:`Payments.credit_by_hand` did: ``created`` the entry (``False``: it
    existed, or nothing was written); the ``checkout`` the reference names; the other
    ledger entry (``holder``) that already credited this payment, if one did;
    ``mismatch``: nothing written, the amount is not the checkout's (:func:`_fixed_amount`);
    ``no_intent``: nothing written, the checkout's payment intent is not known yet (its
    refunds and disputes, keyed by payment intent, would never find this credit)."""

    created: bool
    checkout: Checkout | None
    holder: Holder | None
    mismatch: bool = False
    no_intent: bool = False


class _Refused(Exception):
    """Leaves a transaction (rolled back) with what to answer."""

    def __init__(self, result: ManualCredit) -> None:
        self.result = result


def _checkout(r: Row) -> Checkout:
    return row_as(Checkout, r, _COLS, detail=loads(r["detail"]) or {})


def _fixed_amount(co: Checkout, entry: LedgerEntry) -> bool:
    """Whether crediting ``entry`` by hand for ``co``'s payment would change what the
    payer paid: the checkout's webhook may still credit its amount (``USD``: ledger
    amounts are micro-dollars), and the first credit is the only one. A checkout
    rejected for good (its paid event did not match it) is the operator's to settle at
    the amount they find right; one rejected ``outside_limits`` (an earlier version) is
    credited by its redelivery."""
    if co.status == "rejected" and co.detail.get("rejected") != "outside_limits":
        return False
    return entry.amount != co.amount or co.currency.lower() != "usd"


class Payments(StoreCore):
    async def create_checkout_within(self, co: Checkout, cap: int, *, since: int) -> bool:
        """Insert ``co`` unless its workspace already has ``cap`` checkouts ``creating``
        or ``open`` created after ``since`` (count and insert in one step)."""
        return await self.insert_capped(
            "checkouts",
            _COLS,
            co,
            owner=("workspaces", co.workspace_id),
            count="SELECT COUNT(*) AS n FROM checkouts WHERE workspace_id = ? "
            "AND status IN ('creating', 'open') AND created_at > ?",
            args=[co.workspace_id, since],
            cap=cap,
            detail=dumps(co.detail),
        )

    async def get_checkout(self, checkout_id: str) -> Checkout | None:
        return await self.one(_checkout, f"SELECT {_COLS} FROM checkouts WHERE id = ?", checkout_id)

    async def get_checkout_by_session(self, session_id: str) -> Checkout | None:
        return await self.one(
            _checkout, f"SELECT {_COLS} FROM checkouts WHERE session_id = ?", session_id
        )

    async def get_checkout_by_payment_intent(self, payment_intent: str) -> Checkout | None:
        return await self.one(
            _checkout, f"SELECT {_COLS} FROM checkouts WHERE payment_intent = ?", payment_intent
        )

    async def list_checkouts(self, workspace_id: str) -> list[Checkout]:
        return await self.many(
            _checkout,
            f"SELECT {_COLS} FROM checkouts WHERE workspace_id = ? ORDER BY created_at, id",
            workspace_id,
        )

    async def open_checkout(self, checkout_id: str, session_id: str, url: str) -> bool:
        """Bind the provider's session to a checkout (once) and mark it ``open``."""
        return await self.changed(
            "UPDATE checkouts SET session_id = ?, url = ?, "
            "status = CASE WHEN status = 'creating' THEN 'open' ELSE status END "
            "WHERE id = ? AND (session_id IS NULL OR session_id = ?)",
            session_id,
            url,
            checkout_id,
            session_id,
        )

    async def set_checkout_status(
        self,
        checkout_id: str,
        status: CheckoutStatus,
        *,
        only_from: tuple[CheckoutStatus, ...],
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Move a checkout to ``status`` if it is in one of ``only_from`` (events may come
        in any order: a paid checkout never becomes expired)."""
        marks = ", ".join("?" for _ in only_from)
        sql = f"UPDATE checkouts SET status = ?{', detail = ?' if detail else ''} "
        args: list[Any] = [status, *([dumps(detail)] if detail else [])]
        return await self.changed(
            sql + f"WHERE id = ? AND status IN ({marks})", *args, checkout_id, *only_from
        )

    async def complete_checkout(
        self,
        checkout_id: str,
        session_id: str,
        payment_intent: str | None,
        entry: LedgerEntry,
        at: int,
    ) -> CheckoutCredit:
        """Claim the payment's identifiers, mark the checkout paid and record its top-up
        in one transaction, with the refunds and disputes of it that came first
        (:func:`~meter.store.reversals.settle_pending`): ``credited``;
        ``already_credited`` when the top-up was recorded before (a redelivery: nothing
        changes); ``credited_by_hand`` when an operator credited this payment first
        (nothing credited; the checkout says so), ``credited_by_hand_mismatch`` when
        they credited another amount than ``entry``'s (the checkout's detail has both:
        ``credited_amount``, ``paid_amount``; nothing is debited, the operator decides)."""
        mine = Holder(entry.workspace_id, entry.reference)
        idents = (checkout_id, session_id, payment_intent or "")
        async with self.transaction() as c:
            other, fresh = await claim(c, idents, mine, at)
            if other is not None:
                if await c.fetchval(_OWN_ENTRY, mine.workspace_id, mine.reference):
                    return "already_credited"  # a name of it claimed by hand since: ours
                await hand_over(c, fresh, mine, other)
                by_hand = await c.fetchval(_AMOUNT, other.workspace_id, other.reference)
                off = by_hand is not None and int(by_hand) != entry.amount
                note = {"credited_amount": int(by_hand), "paid_amount": entry.amount}
                await mark_by_hand(c, checkout_id, other, at, session_id, payment_intent,
                                   note if off else {})  # fmt: skip
                await settle_pending(c, idents, at)
                return "credited_by_hand_mismatch" if off else "credited_by_hand"
            await c.execute(
                "UPDATE checkouts SET status = 'paid', session_id = ?, "
                "payment_intent = COALESCE(payment_intent, ?), completed_at = ? "
                "WHERE id = ? AND status <> 'paid' AND (session_id IS NULL OR session_id = ?)",
                session_id,
                payment_intent,
                at,
                checkout_id,
                session_id,
            )
            created = await insert_ledger_entry(c, entry)
            await settle_pending(c, idents, at)  # refunds or disputes that came first
        return "credited" if created else "already_credited"

    async def credit_by_hand(self, entry: LedgerEntry, identifier: str) -> ManualCredit:
        """Record an operator's top-up ``entry`` for the payment named ``identifier`` (a
        reference without its prefixes, :func:`payment_id`), in one transaction.

        When it names a checkout (its id, session id or recorded payment intent), that
        checkout's identifiers are claimed too and it becomes ``credited_by_hand``; a
        provider id (``cs_``/``pi_``) names a payment even unknown here. Nothing is
        written when the checkout is another workspace's, one of the identifiers was
        credited under another ledger entry (``holder``), the checkout has no payment
        intent recorded (``no_intent``: a refund or dispute, which names only the payment
        intent, would never find this credit; the operator credits it under its ``pi_…``),
        or the amount is not the checkout's (``mismatch``: the payer's payment would be
        credited as another sum).
        """
        mine = Holder(entry.workspace_id, entry.reference)
        try:
            async with self.transaction() as c:
                r = await c.fetchrow(_BY_REFERENCE, identifier, identifier, identifier)
                co = _checkout(r) if r else None
                if co is not None and co.workspace_id != entry.workspace_id:
                    raise _Refused(ManualCredit(False, co, None))
                idents: list[str] = []
                if co is not None:
                    idents = [identifier, co.id, co.session_id or "", co.payment_intent or ""]
                elif identifier.startswith(PROVIDER_PREFIXES):
                    idents = [identifier]
                other, _ = await claim(c, idents, mine, entry.created_at)
                if other is not None:
                    raise _Refused(ManualCredit(False, co, other))
                if co is not None and not co.payment_intent:
                    raise _Refused(ManualCredit(False, co, None, no_intent=True))
                if co is not None and _fixed_amount(co, entry):
                    raise _Refused(ManualCredit(False, co, None, mismatch=True))
                created = await insert_ledger_entry(c, entry)
                if co is not None and co.status not in ("paid", "credited_by_hand"):
                    await mark_by_hand(c, co.id, mine, entry.created_at, None, None)
                await settle_pending(c, idents, entry.created_at)
        except _Refused as refused:
            return refused.result
        return ManualCredit(created, co, None)

    async def record_payment_event(
        self,
        event_id: str,
        *,
        provider: str,
        event_type: str,
        session_id: str | None,
        checkout_id: str | None,
        outcome: str,
        at: int,
    ) -> None:
        """Keep every provider event (a redelivery counts ``deliveries`` up)."""
        async with self.connection() as c:
            await c.execute(
                "INSERT INTO payment_events (event_id, provider, type, session_id, checkout_id, "
                "outcome, received_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) "
                "DO UPDATE SET deliveries = payment_events.deliveries + 1, "
                "outcome = excluded.outcome",
                event_id,
                provider,
                event_type,
                session_id,
                checkout_id,
                outcome,
                at,
            )

    async def payment_events(self, session_id: str) -> list[dict[str, Any]]:
        async with self.connection() as c:
            rows = await c.fetch(
                "SELECT event_id, type, outcome, deliveries FROM payment_events "
                "WHERE session_id = ? ORDER BY received_at, event_id",
                session_id,
            )
        return [
            {
                "event_id": r["event_id"],
                "type": r["type"],
                "outcome": r["outcome"],
                "deliveries": int(r["deliveries"]),
            }
            for r in rows
        ]

    async def free_grant_of(self, user_id: str) -> str | None:
        """The workspace that holds the user's one free-credit grant, if any."""
        async with self.connection() as c:
            ws: str | None = await c.fetchval(
                "SELECT workspace_id FROM free_grants WHERE user_id = ?", user_id
            )
        return ws

    async def hand_credit_mismatches(self, workspace: str | None) -> list[Checkout]:
        """Checkouts credited by hand at another amount than their payer paid (the paid
        event said ``credited_by_hand_mismatch``), oldest first."""
        only = "AND workspace_id = ? " if workspace else ""
        async with self.connection() as c:
            rows = await c.fetch(
                f"SELECT {_COLS} FROM checkouts WHERE status = 'credited_by_hand' {only}"
                "AND id IN (SELECT checkout_id FROM payment_events "
                "WHERE outcome = 'credited_by_hand_mismatch') ORDER BY created_at, id",
                *([workspace] if workspace else []),
            )
        return [_checkout(r) for r in rows]
