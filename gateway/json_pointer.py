"""JSON pointers into a channel callback (RFC 6901, plus ``*``), as :mod:`gateway.channels`
reads them.

A ``*`` token takes every element of an array and every value of an object (``{"0": ...}``
is ``[...]`` to a JavaScript bot's ``entry[0]``). ``fold=True`` matches object keys
case-insensitively (:func:`fold_key`: ``Messages``, ``MESSAGES``, ``meſſages``) and takes
every key that matches, as a bot behind a case-insensitive JSON reader (Go's
encoding/json, ASP.NET Core's, Newtonsoft) reads any of them as the field: what decides
that a callback is billable, and how many messages it holds, must see them all.

A walk does at most :data:`MAX_WALK` units of work (a node looked into, a key compared,
more for one folded beyond ASCII), else :class:`TooComplex`: a body of a million empty
arrays costs a bounded walk, not a second of a worker, and a status-only WhatsApp
delivery of 1 MB is read.
"""

from __future__ import annotations

import json
from typing import Any

Pointer = tuple[str, ...]
# What one walk may do, in units of about 0.1 µs: a node looked into, a key compared (one
# beyond ASCII, folded character by character, FOLD_COST more). ~10 ms for a callback's
# three walks at worst; a status-only WhatsApp delivery of 1 MB (~3,300 entries) fits.
MAX_WALK = 40_000
FOLD_COST = 3


class TooComplex(ValueError):
    """The walk would look at more than :data:`MAX_WALK` elements and members."""


def parse_pointer(text: str) -> Pointer:
    """RFC 6901 JSON pointer -> reference tokens (``""`` is the whole document)."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {text!r}")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/"))


MISSING = object()


def scalar(value: Any) -> str:
    """A field's value as the text a channel user or key is: a string, or a number's
    text; "" for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return ""


def fold_key(text: str) -> str:
    """``text`` as case-insensitive JSON readers compare keys: each character lowered
    then raised, one for one (Go's encoding/json folds ``ToUpper(ToLower(r))``, .NET's
    ``OrdinalIgnoreCase`` raises), so ``ſ``, ``K`` (Kelvin), ``ı`` and ``İ`` are ``S``,
    ``K``, ``I`` and ``I``; one character stays one, so only equal lengths can match."""
    if text.isascii():
        return text.upper()
    return "".join(c.lower()[0].upper()[0] for c in text)


def resolve(doc: Any, pointer: Pointer) -> Any:
    """The value at ``pointer`` in ``doc`` (exact keys, no ``*``), or ``MISSING``."""
    for token in pointer:
        if isinstance(doc, dict):
            doc = doc.get(token, MISSING)
        elif isinstance(doc, list) and token.isdigit():
            i = int(token)
            doc = doc[i] if i < len(doc) else MISSING
        else:
            return MISSING
        if doc is MISSING:
            return MISSING
    return doc


def values(doc: Any, pointer: Pointer, *, fold: bool = False) -> list[Any]:
    """Every value at ``pointer``: as :func:`resolve`, but a ``*`` token takes each element
    of an array and each value of an object, and with ``fold`` a token takes the value of
    every key equal to it but for case. :class:`TooComplex` past :data:`MAX_WALK`."""
    if not fold and "*" not in pointer:
        found = resolve(doc, pointer)
        return [] if found is MISSING else [found]
    docs = [doc]
    walked = 0
    for token in pointer:
        walked += len(docs)  # each node looked into (what ``*`` took is counted here)
        if walked > MAX_WALK:
            raise TooComplex(f"a field's path crosses more than {MAX_WALK} members")
        docs, walked = _step(docs, token, fold, walked)
        if not docs:
            return []
    return docs


def each_field(items: list[Any], token: str) -> list[list[Any]]:
    """For each of ``items``, what ``values(item, (token,), fold=True)`` finds, all in one
    walk's bound (:class:`TooComplex` past :data:`MAX_WALK`): a walk of its own per item
    let the ~40,000 items of a 1 MB array cost a second of a worker."""
    walked = len(items)  # each item looked into
    if walked > MAX_WALK:
        raise TooComplex(f"a field's path crosses more than {MAX_WALK} members")
    out = []
    for item in items:
        found, walked = _step([item], token, True, walked)
        out.append(found)
    return out


def _step(docs: list[Any], token: str, fold: bool, walked: int) -> tuple[list[Any], int]:
    """What ``token`` takes from each of ``docs``, and the walk's count after it."""
    step: list[Any] = []
    for d in docs:
        if isinstance(d, dict):
            if token == "*":
                step.extend(d.values())
            elif fold:
                walked = _fold_into(step, d, token, walked)
            elif token in d:
                step.append(d[token])
        elif isinstance(d, list):
            if token == "*":
                step.extend(d)
            elif token.isdigit() and int(token) < len(d):
                step.append(d[int(token)])
    return step, walked


def _fold_into(step: list[Any], d: dict[str, Any], token: str, walked: int) -> int:
    """Append to ``step`` the value of every key of ``d`` equal to ``token`` but for case;
    the walk's count after it (each key compared, a key beyond ASCII :data:`FOLD_COST`)."""
    walked += len(d)
    if walked > MAX_WALK:
        raise TooComplex(f"a field's path crosses more than {MAX_WALK} members")
    n, folded = len(token), fold_key(token)
    for k, v in d.items():
        if len(k) != n:
            continue
        if k.isascii():
            if k.upper() == folded:
                step.append(v)
            continue
        walked += FOLD_COST
        if walked > MAX_WALK:
            raise TooComplex(f"a field's path crosses more than {MAX_WALK} members")
        if fold_key(k) == folded:
            step.append(v)
    return walked


class _Repeated(ValueError):
    """An object of the document names one key twice."""


def _unique(pairs: list[tuple[str, Any]]) -> None:
    if len(dict(pairs)) != len(pairs):
        raise _Repeated
    # None: the document is only checked, never kept


def repeated_key(body: bytes) -> str:
    """Why ``body`` (JSON that orjson parsed) cannot be read as one document: an object
    naming one key twice (orjson keeps the last; Go's encoding/json merges an object's
    repeated objects into one, so a bot reads both: ``"value":{"messages":[..]},
    "value":{"statuses":[..]}``), or nesting Python's reader cannot follow; "" if none.
    Channels never repeat a key. About 7 µs for a WhatsApp message, 8 ms for 1 MB."""
    try:
        json.loads(body, object_pairs_hook=_unique)
    except _Repeated:
        return "an object names one key twice"
    except RecursionError:
        return "the body nests too deeply"
    except ValueError:  # what orjson parsed: not expected
        return "the body is not plain JSON"
    return ""
