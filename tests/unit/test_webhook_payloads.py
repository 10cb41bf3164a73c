"""Owner webhooks, pure: the signature over the raw body and money as decimal strings
(delivery, retries and the outbox run in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from meter.accounts.notifier import render, signature
from meter.store import OutboxEvent

SECRET = "whsec-" + "k" * 26
WS = "wsnotify1"


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"a":1}'
    want = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature(SECRET, body) == f"sha256={want}"


def test_money_in_payloads_becomes_decimal_strings() -> None:
    ev = OutboxEvent(WS, f"{WS}:e7", "free_credits.expired", {"id": "e7", "type": "x",
                     "at": 5, "amount": 48_000_000, "app": "a_b"}, 1_800_000_000_000)  # fmt: skip
    body = orjson.loads(render(ev))
    assert body == {
        "id": f"{WS}:e7",
        "type": "free_credits.expired",
        "workspace_id": WS,
        "created_at": "2027-01-15T08:00:00.000Z",
        "data": {"amount": "48.00", "app_id": "a_b"},
    }
