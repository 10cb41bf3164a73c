"""Payments, attacked where a review found them wanting: a top-up paid while Redis
rebuilds a lost workspace, and one payment credited both by hand and by its webhook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from config import load_catalog
from meter.accounts.rebuild import rebuild_workspace
from meter.redis_layer import keys
from tests.support.payments import USD, deliver, paid_state, paying
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import paid, signed


class LedgerReadThen:
    """The real store, running ``hook`` right after a ledger read: the provider's webhook
    lands between the rebuild's reading of the store and its writing of Redis."""

    def __init__(self, real: Any, hook: Any) -> None:
        self._real, self._hook = real, hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def ledger_entries(self, ws: str, *a: Any, **kw: Any) -> Any:
        entries = await self._real.ledger_entries(ws, *a, **kw)
        await self._hook()
        return entries


async def test_a_topup_paid_during_a_rebuild_is_credited_after_it(
    redis_url: str, tmp_path: Path
) -> None:
    """A grant needs the workspace whole (its ``type``): credited into a leftover hash,
    it was replaced by the rebuild, its marker kept, so no redelivery credited it."""
    async with paying(f"sqlite:///{tmp_path}/store.db", redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "100.00"})
        body = paid(standin.session_for(co["id"]))
        # Redis lost the workspace; a late increment (a refund's) left a partial hash, no
        # "type": admission refuses it and a rebuild is due.
        await admin.redis.delete(keys.ws_key(ws))
        await admin.redis.hincrby(keys.ws_key(ws), "pool", 0)
        during: list[tuple[int, Any]] = []

        async def webhook() -> None:
            during.append(await deliver(admin, body, signed(body)))

        store = LedgerReadThen(admin.store, webhook)
        rebuilt = await rebuild_workspace(store, admin.redis, admin.settings, load_catalog(), ws)
        assert rebuilt == "rebuilt"
        [(status, _)] = during
        assert status != 200  # not credited into the leftover: the provider retries
        status, answer = await deliver(admin, body, signed(body))
        assert (status, answer["outcome"]) == (200, "already_credited"), answer
        assert await paid_state(admin, ws) == (1, 1, 100 * USD, 0)


async def test_a_checkout_cannot_also_be_credited_by_hand(redis_url: str, tmp_path: Path) -> None:
    """The transactions list shows a checkout's session id as its reference; an operator
    crediting "that payment" by hand under it credited it twice (the webhook's and the
    manual reference never met). Now the first credit, here by hand, is the only one; it
    is made under the payment intent (the checkout's names are refused before its paid
    event: its refunds, which name only the payment intent, would not find them)."""
    async with paying(f"sqlite:///{tmp_path}/store.db", redis_url) as (admin, standin):
        token, ws = await admin.owner_workspace()
        co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", token, {"amount": "500.00"})
        session = standin.session_for(co["id"])
        body = paid(session)
        intent = orjson.loads(body)["data"]["object"]["payment_intent"]
        expect = [(409, "payment_intent_required"), (201, None), (409, "payment_intent_required")]
        for reference, want in zip((session["id"], intent, co["id"]), expect, strict=True):
            status, answer = await admin.api(
                "POST",
                f"/v1/workspaces/{ws}/funds",
                OPERATOR_TOKEN,
                {"amount": "500.00", "reference": reference},
            )
            assert (status, answer.get("code")) == want, answer
        status, answer = await deliver(admin, body, signed(body))
        assert (status, answer["outcome"]) == (200, "credited_by_hand"), answer
        stored = await admin.store.get_checkout(co["id"])
        assert stored is not None
        assert stored.status == "credited_by_hand"
        status, answer = await admin.api(
            "POST",
            f"/v1/workspaces/{ws}/funds",
            OPERATOR_TOKEN,
            {"amount": "500.00", "reference": session["id"]},  # as the transactions list it
        )
        assert (status, answer["code"]) == (409, "reference_is_checkout"), answer
        assert await paid_state(admin, ws) == (0, 1, 500 * USD, 0)  # one funds.added
