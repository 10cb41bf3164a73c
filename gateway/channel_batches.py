"""A delivery of several messages, each metered on its own (:mod:`gateway.channels`).

Meta batches WhatsApp messages under load: several ``messages`` in one or several entries
and changes, of one or several users. Refused, Meta would retry the same batch for good,
so each message is admitted as a delivery of it alone would be (its ``from`` the channel
user, its ``id`` the idempotency key), all or none (:meth:`gateway.metering.Meter.admit_all`).

A channel batches when its one ``bill_only_if_present`` pointer holds a ``*`` and the
user pointer (and the key pointer, if any) name fields inside what it finds
(:func:`batch_pointer`). :func:`split` reads each message found, under every spelling of
its keys, as the bill-only pointer found it.

A keyed message's redeliveries must repeat the message itself (:func:`part`: its JSON,
key order aside), not the delivery around it: Meta may retry a message alone or in a
batch composed otherwise, and a digest of the whole body made every such retry 409
``duplicate_delivery``, with the delivery's other messages, for good.
"""

from __future__ import annotations

from typing import Any

import orjson

from config.fields import ChannelRule
from gateway.json_pointer import Pointer, parse_pointer, scalar, values

MAX_BATCH = 100  # messages one delivery may hold (one admission each), else 422

Batch = tuple[tuple[str, str], ...]  # (user, key) of each message
Parts = tuple[bytes, ...]  # what each message's redeliveries must repeat (see the module)


def batch_pointer(rule: ChannelRule) -> Pointer | None:
    """The pointer to each message of a batch, if ``rule`` has one (see the module)."""
    if len(rule.bill_only_if_present) != 1 or rule.user_pointer is None:
        return None
    found = parse_pointer(rule.bill_only_if_present[0])
    inside = [parse_pointer(rule.user_pointer)]
    if rule.idempotency_pointer is not None:
        inside.append(parse_pointer(rule.idempotency_pointer))
    if "*" not in found or any(p[: len(found)] != found or len(p) <= len(found) for p in inside):
        return None
    return found


def split(
    messages: list[Any], at: Pointer, user_at: Pointer | None, key_at: Pointer | None
) -> tuple[Batch, Parts, str]:
    """Each of ``messages`` (found at ``at``) as its user and key (``""`` where it has
    none), each copy of a keyed message too (a redelivery of its key: charged once, but
    counted against the key's deliveries, so 100 copies cannot buy 100 answers for one
    charge at each of its 5 deliveries), and each message's :func:`part`; else why the
    delivery cannot be metered message by message: more than :data:`MAX_BATCH`
    messages, a message naming several users or keys (two spellings of ``from``), or two
    different messages under one user's key (one charge would buy both)."""
    if len(messages) > MAX_BATCH:
        return (), (), f"it holds more than {MAX_BATCH} messages"
    start = len(at)
    seen: dict[tuple[str, str], bytes] = {}
    batch, parts = [], []
    for m in messages:
        users = [] if user_at is None else values(m, user_at[start:], fold=True)
        keys = [] if key_at is None else values(m, key_at[start:], fold=True)
        if len(users) > 1 or len(keys) > 1:
            return (), (), "a message names several users or keys"
        one = (scalar(users[0]) if users else "", scalar(keys[0]) if keys else "")
        own = part(m) if one[1] else b""
        if one[1] and one in seen:
            if not own:
                return (), (), "a message under a repeated key nests too deeply to compare"
            if seen[one] != own:
                return (), (), "two different messages under one key"
        else:  # a copy is another delivery of its key (charged once, counted: not free)
            seen[one] = own
        batch.append(one)
        parts.append(own)
    return tuple(batch), tuple(parts), ""


def part(message: Any) -> bytes:
    """What a keyed message's redeliveries must repeat: the message as JSON with sorted
    keys. Never Python's ``==``, for which ``true`` is ``1`` (two messages one) and which
    recurses on nested arrays (a ``RecursionError``: 500). ``b""`` past orjson's nesting
    bound (255 levels): the whole body is then what a redelivery must repeat."""
    try:
        return orjson.dumps(message, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return b""
