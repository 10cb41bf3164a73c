"""Per-channel rules: who the channel user is, what the idempotency key is, and whether a
callback is a billable user message at all (docs/design.md §3; samples in ``tests/data/channels``).
The skip rules hold only on an authenticated channel (:mod:`gateway.channel_auth`); on
an unauthenticated one every callback is billable.

``web`` (header-only: ``X-Channel-User-Id``), ``slack``, ``msteams`` and ``whatsapp``
come built in; ``settings.channels`` adds channels
and overrides the fields it sets explicitly of a built-in one (e.g. only
``delivery_url``). Any other well-formed channel name works with header-only rules: every
callback is billable, the user comes from ``X-Channel-User-Id``.

Look-up order:

* user: header ``X-Channel-User-Id``, else the channel's user pointer;
* idempotency key: header ``Idempotency-Key``, else the channel's pointer, else header
  ``X-Request-Id`` (a weaker hint: infrastructure often generates it per delivery; not
  one that is not UTF-8, which the bot gets a new one for: :func:`request_id`).

On an authenticated channel whose signature covers the body (Slack, WhatsApp) the body's
user and key win over the headers, which nobody signed.

A pointer token ``*`` on an array takes every element: a WhatsApp delivery may batch
entries, changes and messages, so its pointers are ``/entry/*/changes/*/value/messages/*/...``
and a message anywhere in it is found. One charge never buys several messages. A channel
whose one ``bill_only_if_present`` pointer names the message and holds a ``*``, with the
user and key pointers inside it (WhatsApp: ``.../messages/*`` and ``.../messages/*/from``,
``/id``), meters a delivery of several messages one admission each (:attr:`Message.batch`,
:mod:`gateway.channel_batches`): each its own user and key from the body alone, never the headers
(one header cannot name several messages); a message without a user refuses the delivery
(400), one without a key is charged at each delivery. A copy of a keyed message is a
redelivery of its key; signed, a key's redeliveries must repeat its message, alone or in
any batch (:attr:`Message.parts`), unsigned the whole body. A delivery of more than
:data:`MAX_BATCH` messages, a message naming several users or keys (its key under two
spellings), two different messages under one user's key, or several messages on another
channel (two spellings of Slack's ``event``) cannot be metered that way
(:attr:`Message.several`: 422 ``batched_delivery``).

What bills and counts messages matches keys case-insensitively (``Messages``, ``Entry``:
a bot behind Go's or .NET's JSON reader reads them as the fields; every spelling
counts); a skip rule skips only on the exact key, all its spellings agreeing, and only
where every spelling of the path to it holds it (:mod:`gateway.json_pointer`). A walk
looks at a bounded number of members; past it, for a signed body that does not parse on
a channel that bills only what it finds, or for one naming a key twice in an object
(:func:`~gateway.json_pointer.repeated_key`: Go merges the repeats, orjson keeps the last)
the callback is refused (:attr:`Message.unreadable`: 422 ``uninspectable_delivery``).

The body is parsed (orjson) only for a channel that has a pointer or a skip rule. A
skipped callback buys no text: a fixed answer, 200 or 400, whose timing the bot still
chooses (:mod:`gateway.unbilled`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from config.fields import ChannelRule
from gateway.channel_batches import MAX_BATCH, batch_pointer, part, split
from gateway.channel_builtin import BUILTIN
from gateway.channel_stamps import Stamps, read
from gateway.header_text import clean
from gateway.json_pointer import (
    Pointer,
    TooComplex,
    parse_pointer,
    repeated_key,
    resolve,
    scalar,
    values,
)

__all__ = [
    "MAX_BATCH",
    "Channel",
    "Channels",
    "Message",
    "parse_pointer",
    "request_id",
    "resolve",
    "values",
]

USER_HEADER = "X-Channel-User-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-Id"
MAX_CHALLENGE = 256


def request_id(headers: Mapping[str, str]) -> str:
    """``X-Request-Id`` as a message's key: none when it is not UTF-8 (the bot gets a new
    one in its place, gateway.forwarding), as when the request has none."""
    rid = headers.get(REQUEST_ID_HEADER, "")
    return rid if rid.isascii() or clean(rid) else ""


class Message(NamedTuple):
    """What a callback is: billable or not, and its channel user and idempotency key."""

    billable: bool
    user: str
    key: str
    challenge: str | None = None  # what the answer to a skipped callback may echo
    several: str = ""  # why a delivery of several messages cannot be metered (refused)
    unreadable: str = ""  # why the body could not be classified (refused, never skipped)
    batch: tuple[tuple[str, str], ...] = ()  # (user, key) of each message of a batch
    # What the redeliveries of each message of ``batch`` (or of the one message of a
    # batching channel, keyed by its own id) must repeat (gateway.channel_batches part);
    # none, or b"": the whole body.
    parts: tuple[bytes, ...] = ()
    stamps: Stamps | None = None  # a signed body's items' times (gateway.channel_stamps)


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel's compiled rule."""

    label: str  # metrics label: the channel's name if known, else "other"
    user_pointer: Pointer | None
    key_pointer: Pointer | None
    skip_if_equals: tuple[tuple[Pointer, frozenset[str]], ...]
    skip_if_present: tuple[Pointer, ...]
    bill_only_if_present: tuple[Pointer, ...]
    delivery_url: str | None
    batch_pointer: Pointer | None = None  # each message of a batch (see the module)
    timestamp_pointers: tuple[Pointer, ...] = ()  # gateway.channel_stamps

    @property
    def needs_body(self) -> bool:
        return bool(
            self.user_pointer
            or self.key_pointer
            or self.skip_if_equals
            or self.skip_if_present
            or self.bill_only_if_present
        )

    def inspect(
        self, headers: Mapping[str, str], body: bytes | None, *, authenticated: bool
    ) -> Message:
        """Classify one callback; ``body`` is given only when :attr:`needs_body`.

        The skip rules apply only to a callback that ``authenticated`` as coming from the
        channel: an unverified body never buys a free pass.
        """
        user = headers.get(USER_HEADER, "")
        key = headers.get(IDEMPOTENCY_HEADER, "")
        if body is None:
            return Message(True, user, key or request_id(headers))
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            if authenticated and self.bill_only_if_present:
                # Finding no message in what it cannot read must not pass the callback
                # unbilled: a reader that takes a BOM, say, finds the messages.
                return Message(True, user, key, unreadable="the body is not plain JSON")
            doc = None
        else:  # what the bot may read otherwise than orjson (gateway.json_pointer)
            repeated = repeated_key(body) if body else ""
            if repeated:
                return Message(True, user, key, unreadable=repeated)
        try:
            msg = self._classify(headers, doc, user, key, authenticated=authenticated)
            if authenticated and self.timestamp_pointers:  # billable or not
                msg = msg._replace(stamps=read(doc, self.timestamp_pointers))
            return msg
        except TooComplex as exc:
            return Message(True, user, key, unreadable=str(exc))

    def _classify(
        self, headers: Mapping[str, str], doc: Any, user: str, key: str, *, authenticated: bool
    ) -> Message:
        # A field under any spelling of its keys counts (gateway.json_pointer: fold).
        present = [values(doc, p, fold=True) for p in self.bill_only_if_present]
        if authenticated:
            skipped = self._skipped(doc, present)
            if skipped:
                return Message(False, user, key, self._challenge(doc))
        users = [] if self.user_pointer is None else values(doc, self.user_pointer, fold=True)
        keys = [] if self.key_pointer is None else values(doc, self.key_pointer, fold=True)
        # A message without user or key is still a message: counted by its presence too.
        if len(users) > 1 or len(keys) > 1 or any(len(found) > 1 for found in present):
            if self.batch_pointer is None:
                return Message(True, user, key, several="it names several users or messages")
            at, user_at, key_at = self.batch_pointer, self.user_pointer, self.key_pointer
            batch, parts, why = split(present[0], at, user_at, key_at)
            if not authenticated:  # anyone's envelope around a used message: the body
                parts = tuple(b"" for _ in parts)
            return Message(True, user, key, several=why, batch=batch, parts=parts)
        body_user = scalar(users[0]) if users else ""
        body_key = scalar(keys[0]) if keys else ""
        if authenticated:
            # The signature covers the body, not the headers: a replayed signed body with
            # another user or key header must not become a new (charged) message. So the
            # user is the signed one alone where the channel names one (the channel never
            # sends the header): a signed body without it (a Slack team_join: its
            # event.user is an object) replayed with other user headers was a new user's
            # message each time, a key being one user's. Without one: missing_channel_user.
            if self.user_pointer is not None:
                user = body_user
            key = body_key or key
        user = user or body_user
        key = key or body_key
        if authenticated and self.batch_pointer is not None and present[0] and body_key:
            # As in a batch: Meta may deliver this message in one later.
            return Message(True, user, key, parts=(part(present[0][0]),))
        return Message(True, user, key or request_id(headers))

    def _challenge(self, doc: Any) -> str | None:
        """The ``challenge`` of Slack's URL verification, which is all its answer may
        carry (:mod:`gateway.unbilled`); other skipped callbacks get an empty answer."""
        if self.label != "slack" or resolve(doc, ("type",)) != "url_verification":
            return None
        value = resolve(doc, ("challenge",))
        if isinstance(value, str) and 1 <= len(value) <= MAX_CHALLENGE and value.isprintable():
            return value
        return None

    def _skipped(self, doc: Any, present: list[list[Any]]) -> bool:
        """Whether the channel's rules say this callback is not a user message. Each rule
        errs towards billing: a value to skip must be at the exact key and every spelling
        of it must be one to skip; a field must be at the exact key to skip; both only
        when every spelling of the path to it holds it (:func:`_held`); a field to bill
        is found under any spelling (``present``)."""
        for pointer, skip in self.skip_if_equals:
            # With ``*``: skipped only if every value found is one to skip.
            found = values(doc, pointer, fold=True)
            if not values(doc, pointer) or not _held(doc, pointer):
                continue
            if all(isinstance(v, str) and v in skip for v in found):
                return True
        for pointer in self.skip_if_present:
            if values(doc, pointer) and _held(doc, pointer):
                return True
        return any(not found for found in present)


def _held(doc: Any, pointer: Pointer) -> bool:
    """Whether every node the path to ``pointer``'s last key reaches under any spelling
    holds that key (any spelling): ``{"event": {"bot_id": ..}, "Event": {a message}}``
    is the bot's echo to a reader of exact keys, a user's message to Go's or .NET's
    (``Event``, the last spelling, wins), so it is not skipped."""
    parents = values(doc, pointer[:-1], fold=True)
    return all(values(node, pointer[-1:], fold=True) for node in parents)


def compile_rule(label: str, rule: ChannelRule) -> Channel:
    return Channel(
        label=label,
        user_pointer=parse_pointer(rule.user_pointer) if rule.user_pointer is not None else None,
        key_pointer=(
            parse_pointer(rule.idempotency_pointer)
            if rule.idempotency_pointer is not None
            else None
        ),
        skip_if_equals=tuple(
            (parse_pointer(p), frozenset(v)) for p, v in rule.skip_if_equals.items()
        ),
        skip_if_present=tuple(parse_pointer(p) for p in rule.skip_if_present),
        bill_only_if_present=tuple(parse_pointer(p) for p in rule.bill_only_if_present),
        delivery_url=rule.delivery_url,
        batch_pointer=batch_pointer(rule),
        timestamp_pointers=tuple(_field_pointer(p) for p in rule.timestamp_pointers),
    )


def _field_pointer(text: str) -> Pointer:
    pointer = parse_pointer(text)
    if not pointer:
        raise ValueError("a timestamp pointer names a field of an item, not the whole body")
    return pointer


def merge(builtin: ChannelRule, configured: ChannelRule) -> ChannelRule:
    """A built-in rule with the fields ``configured`` set explicitly replaced."""
    changes = {name: getattr(configured, name) for name in configured.model_fields_set}
    return builtin.model_copy(update=changes)


class Channels:
    """The rules of every channel, compiled once at start-up."""

    def __init__(self, configured: Mapping[str, ChannelRule]) -> None:
        rules = dict(BUILTIN)
        for name, rule in configured.items():
            rules[name] = merge(rules[name], rule) if name in rules else rule
        self._known = {name: compile_rule(name, rule) for name, rule in rules.items()}
        self._default = compile_rule("other", ChannelRule())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._known)

    def get(self, name: str) -> Channel:
        return self._known.get(name, self._default)
