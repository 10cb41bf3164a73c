"""The request the fast path forwards (gateway.fastpath.head.forward_bytes) is byte for
byte what it forwarded before a193673's successor: the message's headers as text through
forwarded_headers, Verified.rewrite, Admitted.vouch and request_bytes, with
gateway.forwarding and gateway.fastpath.wire pinned from git (tests/support/pinned.py),
less a client's X-Forwarded-Host when the request names no host (dropped since).
Random client fields (every name the gateway sets, reads or drops, in several cases,
given once or twice, values not UTF-8, console cookies, Connection lists), channel
verdicts, methods and bodies; and the usual messages never take the text route."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from yarl import URL

from gateway import via
from gateway.channel_credentials import Verified
from gateway.fastpath import head
from gateway.fastpath.message import Message
from gateway.fastpath.wire import text_headers
from gateway.traffic_rules import Admitted
from tests.support.pinned import pinned

BEFORE = "a193673"
# The id the gateway makes for a request without one: each module counts its own.
_RID = re.compile(rb"X-Request-Id: [0-9a-f]{12}-[0-9a-f]+\r\n")

NAMES = [b"Host", b"host", b"HOST", b"Connection", b"connection", b"Keep-Alive", b"TE",
         b"Trailer", b"Upgrade", b"Expect", b"Proxy-Authorization", b"proxy-x", b"Proxy",
         b"X-Creditgate-App", b"x-creditgate-channel-auth", b"X-Forwarded-For",
         b"x-forwarded-for", b"X-Forwarded-Proto", b"X-FORWARDED-PROTO", b"X-Forwarded-Host",
         b"Forwarded", b"forwarded", b"X-Real-IP", b"x-real-ip", b"Via", b"VIA",
         b"X-Request-Id", b"x-request-id", b"X-Channel-User-Id", b"x-channel-user-id",
         b"X_Channel_User_Id", b"Idempotency-Key", b"idempotency-key", b"Authorization",
         b"authorization", b"Cookie", b"cookie", b"Content-Length", b"content-length",
         b"Content-Type", b"X-A", b"x-a", b"Close", b"User-Agent", b"X-" + b"n" * 70,
         b"X-\xc3\xa9"]  # fmt: skip
VALUES = [b"", b"v", b"1.2.3.4", b"1.2.3.4, 5.6.7.8", b"1.1 proxy", b"1.0 a (c, d), 1.1 b",
          b"1.1 edge (open", b"for=1.2.3.4", b"keep-alive", b"close", b"x-a", b" X-A ,TE",
          b"Keep-Alive, upgrade", b"x-forwarded-for", b"cookie", b"a,,b", b"cg_session=1",
          b"a=1; __Host-cg_session=2", b"a=1", b"\xc3\xa9", b"\xff", b"a\xffb",
          b"Bearer t", b"5", b"12", b"k\te", b"x" * 300]  # fmt: skip
VERDICTS = [Verified(False), Verified(True), Verified(True, user="u1"),
            Verified(True, drop_authorization=True),
            Verified(True, user="\xfc", drop_authorization=True),
            Verified(True, handshake_challenge="c")]  # fmt: skip
URLS = [URL(u, encoded=True) for u in ("http://bot:8080/h/x?q=1", "http://[::1]:9/p",
                                       "http://bot/", "http://bot/caf%C3%A9?a=%20")]  # fmt: skip


def _admitted(user: str | None, key: str | None) -> Admitted:
    return Admitted(None, None, False, None, user, key)


def _message(raw: list[tuple[bytes, bytes]], method: str, app: str) -> Message:
    msg = Message()
    msg.method, msg.headers, msg.app_id = method, raw, app
    return msg


def _before(fwd: Any, wire: Any, case: tuple[Any, ...]) -> bytes:
    """What gateway.fastpath.dispatch did at BEFORE (its modules pinned)."""
    msg, peer, url, verified, admitted, body = case
    text = wire.text_headers(msg.headers)
    headers, _ = fwd.forwarded_headers(text, peer, "http", app=msg.app_id)
    if not text.get("Host"):  # since: a client's X-Forwarded-Host never passes without one
        headers.popall("X-Forwarded-Host", None)
    verified.rewrite(headers)
    if admitted.user is not None:
        admitted.vouch(headers)
    return _RID.sub(b"X-Request-Id: (made)\r\n", wire.request_bytes(msg.method, url, headers, body))


def _now(case: tuple[Any, ...], route: Any = head.forward_bytes) -> bytes:
    msg, peer, url, verified, admitted, body = case
    got = route(msg, text_headers(msg.headers), peer, url, verified, admitted, body)
    return _RID.sub(b"X-Request-Id: (made)\r\n", got)


def _case(rng: random.Random) -> tuple[Any, ...]:
    raw = [(b"Host", b"gw.example:8080")] if rng.random() < 0.9 else []
    if rng.random() < 0.5:  # anything: mostly for the text route
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 12])):
            raw.insert(rng.randrange(len(raw) + 1), (rng.choice(NAMES), rng.choice(VALUES)))
    else:  # each name once, UTF-8: mostly made from bytes
        names = {name.lower(): name for name in rng.sample(NAMES, rng.randrange(8))}
        for name in names.values():
            value = rng.choice([v for v in VALUES if v.isascii()] + [b"\xc3\xa9"])
            raw.insert(rng.randrange(len(raw) + 1), (name, value))
    method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    body = rng.choice([None, None, b"", b"hi"])
    verified = rng.choice(VERDICTS)
    admitted = _admitted(rng.choice([None, None, "", "vu", "\xe9"]), rng.choice([None, "", "k1"]))
    peer = rng.choice(["127.0.0.1", "::1", ""])
    app = rng.choice(["app1", "app1", ""])
    return _message(raw, method, app), peer, rng.choice(URLS), verified, admitted, body


@pytest.mark.parametrize("via_name", ["creditgate", "edge-1"])
def test_forwarded_requests_are_what_they_were(via_name: str) -> None:
    fwd = pinned(BEFORE, "gateway/forwarding.py")
    wire = pinned(BEFORE, "gateway/fastpath/wire.py")
    rng = random.Random(20261204)
    via.name_via(via_name)
    try:
        for phase in range(2):
            if phase:  # other clients' names fill the memo first
                for n in range(3000):
                    junk = _message([(b"X-Junk-%d" % n, b"v")], "GET", "a")
                    case = (junk, "", URLS[0], VERDICTS[0], _admitted(None, None), None)
                    assert _now(case) == _before(fwd, wire, case)
            for _ in range(6000):
                case = _case(rng)
                want = _before(fwd, wire, case)
                assert _now(case) == want, case
                assert _now(case, head.by_text) == want, case
    finally:
        via.name_via(via.DEFAULT_NAME)
    assert len(head._KINDS) <= head._KINDS_MAX


USUAL = [
    [(b"Host", b"gw:8080"), (b"X-Channel-User-Id", b"u1")],
    [(b"Host", b"gw"), (b"User-Agent", b"TelegramBot"), (b"Content-Length", b"2"),
     (b"Content-Type", b"application/json"), (b"Connection", b"keep-alive"),
     (b"X-Telegram-Bot-Api-Secret-Token", b"s")],
    [(b"host", b"gw"), (b"x-forwarded-for", b"10.0.0.1"), (b"x-forwarded-proto", b"https"),
     (b"x-request-id", b"r-1"), (b"via", b"1.1 lb"), (b"authorization", b"Bearer t"),
     (b"idempotency-key", b"k1"), (b"cookie", b"a=1"), (b"keep-alive", b"timeout=5")],
]  # fmt: skip


@pytest.mark.parametrize("raw", USUAL)
def test_the_usual_messages_are_made_from_bytes(
    raw: list[tuple[bytes, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every verdict: the text route is the exception (see gateway.fastpath.head)."""
    fwd = pinned(BEFORE, "gateway/forwarding.py")
    wire = pinned(BEFORE, "gateway/fastpath/wire.py")

    def text_route(*args: Any) -> bytes:
        raise AssertionError("took the text route")

    for verified in VERDICTS:
        for admitted in (_admitted(None, None), _admitted("vu", "k2"), _admitted("", None)):
            case = (_message(raw, "POST", "app1"), "127.0.0.1", URLS[0], verified, admitted, b"hi")
            want = _before(fwd, wire, case)
            with monkeypatch.context() as patch:
                patch.setattr(head, "by_text", text_route)
                assert _now(case) == want
