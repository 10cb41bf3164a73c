"""Memos of pure functions of one short value that traffic repeats (a client's Host, a
bot's Connection value, a target URL): bounded in count, and in the length of what is
kept, so a client varying the value costs only the misses and never fills memory."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sized
from typing import Any, Protocol, TypeVar, cast

R = TypeVar("R", covariant=True)


class Memo(Protocol[R]):
    """A memoised function; ``cache_info`` is its cache's (functools.lru_cache)."""

    def __call__(self, value: Any, /) -> R: ...

    def cache_info(self) -> functools._CacheInfo: ...


class Short(Hashable, Sized, Protocol):
    """A value a memo may key on: hashable, with a length (str, bytes)."""


def short_memo(maxsize: int, max_len: int) -> Callable[[Callable[[Any], R]], Memo[R]]:
    """``fn(value)`` remembered for up to ``maxsize`` values of at most ``max_len``
    (a longer one is worked out each time, never kept)."""

    def decorate(fn: Callable[[Any], R]) -> Memo[R]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        # A plain closure: a class with __call__ costs twice its overhead per call.
        def call(value: Short) -> R:
            return cached(value) if len(value) <= max_len else fn(value)

        call.cache_info = cached.cache_info  # type: ignore[attr-defined]
        return cast(Memo[R], functools.wraps(fn)(call))

    return decorate
