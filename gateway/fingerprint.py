"""A keyed message's fingerprint: what its redelivery must repeat to be served again
under its key, charged once (admit.lua compares it with the one its record holds)."""

from __future__ import annotations

import hashlib

from gateway.inbound import Headers

_BODY_FORM = ("Content-Type", "Content-Encoding")  # how the bot reads a body: message_digest
_WITH_FORM = b"creditgate-form"  # message_digest's personalization when it hashes _BODY_FORM
# A method override some frameworks honour (the bot then reads a POST as another verb):
# hashed when present, under a personalization of its own (_WITH_VERB).
_VERB_OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
_WITH_VERB = b"creditgate-verb"


def message_digest(
    method: str, raw_path: str, body: object, part: bytes = b"", headers: Headers | None = None
) -> str:
    """What a redelivery must repeat: method, path with query, body and how the bot reads
    it (``Content-Type``: charset, boundary; ``Content-Encoding``, its lines CR-joined, as
    aiohttp reads only the first; a method override, when there is one), 16 hex digits;
    with ``part``, that message of the body instead (gateway.channel_batches), marked so
    that no body's digest is a part's."""
    # With headers, a hash of its own (blake2b's personalization): the fingerprint without
    # them (keyed_digest's legacy) hashes method, target and body in the same layout, so
    # a body beginning with another message's header lines would otherwise match it. A
    # method override is hashed under a third, for the same reason, and only when there is
    # one: the fingerprint of every other message is the one earlier versions recorded.
    person, lines = b"", b""
    if headers is not None:
        person = _WITH_FORM
        form = ["\r".join(headers.getall(name, ())) for name in _BODY_FORM]
        if any(name in headers for name in _VERB_OVERRIDES):
            person = _WITH_VERB
            form += ["\r".join(headers.getall(name, ())) for name in _VERB_OVERRIDES]
        lines = "\n".join(form).encode(errors="surrogateescape") + b"\n"
    h = hashlib.blake2b(digest_size=8, person=person)
    h.update(method.encode())
    h.update(b" " + raw_path.encode(errors="surrogateescape") + b"\n")
    h.update(lines)
    if part:
        h.update(b"part\n" + part)
    elif isinstance(body, bytes):
        h.update(body)
    return h.hexdigest()


def keyed_digest(method: str, raw_path: str, body: object, part: bytes, headers: Headers) -> str:
    """:func:`message_digest`, ``L`` and the one without headers that records made before
    the upgrade hold: admit.lua records the first and takes either (to drop, in time)."""
    legacy = message_digest(method, raw_path, body, part)
    return message_digest(method, raw_path, body, part, headers) + "L" + legacy
