"""Opaque cursors of the paginated lists: the sort key of the last row served.

A cursor is the URL-safe base64 of a JSON array (the key) tagged with the list it
belongs to, so a cursor of one list cannot be replayed against another. It holds no
secret and grants nothing: every page is still authorized and filtered as a whole.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from meter.errors import InvalidInput

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
# A key integer the stores can compare (SQLite INTEGER, PostgreSQL BIGINT): one beyond
# it is no cursor this gateway made, and must not reach the store (a 503, not a 422).
# Key texts (ids, names, times) are printable: a NUL, which PostgreSQL cannot compare
# with text, or any other control character is no cursor either.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode(kind: str, key: list[Any]) -> str:
    raw = orjson.dumps([kind, *key])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, cursor: str | None, types: tuple[type, ...]) -> list[Any] | None:
    """The key in ``cursor`` (``None`` for the first page); 422 ``cursor`` if it is not a
    cursor of list ``kind`` whose key has these types."""
    if cursor is None:
        return None
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        data = None
    ok = (
        isinstance(data, list)
        and len(data) == len(types) + 1
        and data[0] == kind
        and all(type(v) is t for v, t in zip(data[1:], types, strict=True))
        and all(_INT_MIN <= v <= _INT_MAX for v in data[1:] if type(v) is int)
        and all(v.isprintable() for v in data[1:] if type(v) is str)
    )
    if not ok:
        raise InvalidInput("cursor", "is not a cursor of this list; use next_cursor as given")
    assert isinstance(data, list)
    return data[1:]


def limit_of(text: str | None) -> int:
    """The page size asked for (query strings are text); 422 ``limit`` when out of range."""
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput("limit", f"must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def page(kind: str, rows: list[T], limit: int, key: Any) -> Page[T]:
    """``rows`` fetched with ``limit + 1`` -> one page and the cursor of the next."""
    if len(rows) <= limit:
        return Page(rows, None)
    items = rows[:limit]
    return Page(items, encode(kind, list(key(items[-1]))))
