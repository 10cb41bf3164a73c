"""Bytes a client connection received and has not parsed yet (pipelined requests).

Chunks are kept as they arrived; taking from the front slices a ``memoryview``, so
serving one pipelined request after another costs the size of each request, never a
copy or a re-parse of what waits behind it.
"""

from __future__ import annotations

from collections import deque

Chunk = bytes | memoryview


class Backlog:
    """A FIFO of received bytes, with their count (``size``)."""

    __slots__ = ("_chunks", "size")

    def __init__(self) -> None:
        self._chunks: deque[Chunk] = deque()
        self.size = 0

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: Chunk) -> None:
        if data:
            self._chunks.append(data)
            self.size += len(data)

    def push_front(self, data: Chunk) -> None:
        """Give back bytes taken but not used (they came before everything else)."""
        if data:
            self._chunks.appendleft(data)
            self.size += len(data)

    def take(self, limit: int) -> Chunk:
        """The first chunk, or its first ``limit`` bytes (the rest stays first)."""
        first = self._chunks.popleft()
        if len(first) > limit:
            view = memoryview(first)
            self._chunks.appendleft(view[limit:])
            first = view[:limit]
        self.size -= len(first)
        return first

    def take_all(self) -> bytes:
        data = b"".join(self._chunks)
        self.clear()
        return data

    def clear(self) -> None:
        self._chunks.clear()
        self.size = 0
