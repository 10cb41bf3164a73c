"""Checkouts with the payment provider, the events it sent, and the free-grant claims.

Crediting a checkout is one transaction: the checkout becomes ``paid`` and the ledger
gets its top-up, keyed by ``checkout:<provider session id>`` (unique per workspace), so
redelivered or concurrent provider events credit a payment once.
"""

from __future__ import annotations

from typing import Any

from meter.store.db import Row, StoreCore, dumps, loads, row_as
from meter.store.ledger import insert_ledger_entry
from meter.store.models import Checkout, CheckoutStatus, LedgerEntry

_COLS = (
    "id, workspace_id, app_id, amount, currency, provider, session_id, payment_intent, url, "
    "status, created_by, created_at, completed_at, detail"
)


def _checkout(r: Row) -> Checkout:
    return row_as(Checkout, r, _COLS, detail=loads(r["detail"]) or {})


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

    async def get_checkout_by_reference(self, reference: str) -> Checkout | None:
        """The checkout that ``reference`` names: its id, session id or payment intent."""
        return await self.one(
            _checkout,
            f"SELECT {_COLS} FROM checkouts WHERE id = ? OR session_id = ? OR payment_intent = ?",
            reference,
            reference,
            reference,
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
    ) -> bool:
        """Mark the checkout paid and record its top-up in one transaction; ``False`` when
        the top-up was recorded before (a redelivery: nothing changes)."""
        async with self.transaction() as c:
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
            return await insert_ledger_entry(c, entry)

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
