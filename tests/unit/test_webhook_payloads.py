"""Owner webhooks, pure: the signature over the raw body and money as decimal strings
(delivery, retries and the outbox run in tests/integration/test_webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac

import orjson

from meter.accounts.notifier import render
from meter.accounts.webhook_signing import (
    TOLERANCE_S,
    signature,
    timed_signature,
    verify,
    verify_timed,
)
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


def test_the_timed_signature_signs_the_time_and_the_body() -> None:
    body = b'{"id":"wsnotify1:e1"}'
    header = timed_signature(SECRET, body, 1_800_000_000)
    want = hmac.new(SECRET.encode(), b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={want}"


def test_a_receiver_takes_a_timed_signature_only_within_the_tolerance() -> None:
    body, t = b'{"id":"wsnotify1:e1"}', 1_800_000_000
    header = timed_signature(SECRET, body, t)
    assert TOLERANCE_S == 300
    for now in (t, t - 300, t + 300, t + 299.5):
        assert verify_timed(SECRET, body, header, now)
    for now in (t + 301, t - 301, t + 86_400):  # a replay made later is refused
        assert not verify_timed(SECRET, body, header, now)
    assert verify_timed(SECRET, body, header, t + 600, tolerance_s=600)


def test_a_timed_signature_refuses_anything_changed() -> None:
    body, t = b'{"id":"wsnotify1:e1"}', 1_800_000_000
    header = timed_signature(SECRET, body, t)
    v1 = header.split(",v1=")[1]
    assert not verify_timed(SECRET, body + b" ", header, t)  # the body
    assert not verify_timed(SECRET, body, f"t={t + 1},v1={v1}", t)  # the time, moved on
    assert not verify_timed("another-secret-entirely", body, header, t)
    for bad in (None, "", f"v1={v1}", f"t=,v1={v1}", f"t=x{t},v1={v1}", f"t={t}",
                f"t={t},t={t},v1={v1}", f"t=１８,v1={v1}", header.upper()):  # fmt: skip
        assert not verify_timed(SECRET, body, bad, t), bad
    # any v1 may match: a receiver takes a header carrying more than one
    assert verify_timed(SECRET, body, f"t={t},v1={'0' * 64},v1={v1}", t)


def test_hostile_signature_headers_are_refused_never_raised() -> None:
    """What a receiver is told to run never throws on what an attacker sends: a huge
    ``t`` (OverflowError past 308 digits, ValueError past Python's 4300), a non-ASCII
    ``v1`` (TypeError from compare_digest)."""
    body, t = b'{"id":"wsnotify1:e1"}', 1_800_000_000
    good = timed_signature(SECRET, body, t)
    v1 = good.split(",v1=")[1]
    hostile = ["t=" + "9" * 400 + ",v1=00", "t=" + "9" * 5000 + ",v1=00",
               "t=" + "0" * 20 + str(t) + f",v1={v1}", f"t={t},v1=\u00e9",
               f"t={t},v1={v1[:-1]}\u00e9", "t=0" + good[2:]]  # fmt: skip
    for bad in hostile:
        assert verify_timed(SECRET, body, bad, t) is False, bad[:40]
    assert verify(SECRET, body, "sha256=\u00e9") is False
    assert verify(SECRET, body, signature(SECRET, body)) is True
    assert verify_timed(SECRET, body, good, t) is True
