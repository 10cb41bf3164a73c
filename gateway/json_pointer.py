"""JSON pointers into a channel callback (RFC 6901, plus ``*``), as :mod:`gateway.channels`
reads them.

A ``*`` token takes every element of an array and every value of an object (``{"0": ...}``
is ``[...]`` to a JavaScript bot's ``entry[0]``). ``fold=True`` matches object keys
case-insensitively (:func:`fold_key`: ``Messages``, ``MESSAGES``, ``meſſages``) and takes
every key that matches, as a bot behind a case-insensitive JSON reader (Go's
encoding/json, ASP.NET Core's, Newtonsoft) reads any of them as the field: what decides
that a callback is billable, and how many messages it holds, must see them all.

A walk touches at most :data:`MAX_WALK` array elements and object members (each step
counts what it looks at), else :class:`TooComplex`: a body of a million empty arrays
costs a bounded walk, not a second of a worker.
"""

from __future__ import annotations

from typing import Any

Pointer = tuple[str, ...]
MAX_WALK = 10_000  # elements and members one walk may look at


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


def _take(d: Any, token: str, folded: str, fold: bool) -> tuple[list[Any], int]:
    """What one token takes from one node, and how many members it looked at."""
    if isinstance(d, dict):
        if token == "*":
            return list(d.values()), len(d)
        if fold:
            n = len(token)
            return [v for k, v in d.items() if len(k) == n and fold_key(k) == folded], len(d)
        return ([d[token]] if token in d else []), 1
    if isinstance(d, list):
        if token == "*":
            return d, len(d)
        if token.isdigit() and int(token) < len(d):
            return [d[int(token)]], 1
    return [], 1


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
        folded = fold_key(token)
        step: list[Any] = []
        for d in docs:
            taken, cost = _take(d, token, folded, fold)
            walked += cost
            if walked > MAX_WALK:
                raise TooComplex(f"a field's path crosses more than {MAX_WALK} members")
            step.extend(taken)
        if not step:
            return []
        docs = step
    return docs
