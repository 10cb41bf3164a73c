"""The keyed fingerprint's values are records in Redis: a release may add what it covers
only where earlier ones never looked, so a redelivery straddling an upgrade still matches
the record the previous version wrote (values pinned from 3ff4f7a's gateway/fingerprint.py)."""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.fingerprint import keyed_digest

BODY = b'{"q":1}'


def test_a_message_without_a_method_override_keeps_the_fingerprint_recorded_before() -> None:
    headers = CIMultiDict(
        [("Content-Type", "application/json"), ("Content-Encoding", "gzip"),
         ("Content-Encoding", "br"), ("X-Other", "ignored")]
    )  # fmt: skip
    assert keyed_digest("POST", "/hooks/web/a_b?x=1", BODY, b"", headers) == (
        "27d4714a33b13db4L8d7899d699ead36e"
    )
    assert keyed_digest("POST", "/hooks/web/a_b", BODY, b"part1", CIMultiDict()) == (
        "7a645807343b92c3Ldc509c4cad160d59"
    )


def test_a_method_override_in_any_spelling_or_case_is_another_message() -> None:
    plain = keyed_digest("POST", "/h", BODY, b"", CIMultiDict({"Content-Type": "text/plain"}))
    seen = {plain.partition("L")[0]}
    for name in ("X-HTTP-Method-Override", "x-http-method", "X-Method-Override"):
        for verb in ("DELETE", "PUT"):
            headers = CIMultiDict({"Content-Type": "text/plain", name: verb})
            digest, _, legacy = keyed_digest("POST", "/h", BODY, b"", headers).partition("L")
            assert legacy == plain.partition("L")[2]  # what earlier versions recorded
            seen.add(digest)
    assert len(seen) == 7
