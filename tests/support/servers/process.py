"""What every test server shares: the loopback host, free ports, errors, log tails and
the ``atexit`` hook that kills whatever a crashed test run left running."""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
from pathlib import Path
from typing import Protocol, Self

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be started, or did not reach the expected state in time."""


def _worker_share() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker; (0, 1) outside ``pytest -n``."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not name.startswith("gw") or not name[2:].isdigit() or count < 1:
        return 0, 1
    return int(name[2:]) % count, count


_given: set[int] = set()


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the OS picks it).

    A port is free only until someone binds it, and the caller binds it later (a server
    it starts). So this process never hands out the same port twice, and the workers of
    one ``pytest -n`` run take disjoint shares: the OS gives out odd ports, and a worker
    keeps those whose half is its index modulo the workers' count. Two workers then never
    race for one port, and a server that loses the race to another run is retried by its
    starter (``start_redis``, ``start_postgres``, the cluster's nodes)."""
    index, count = _worker_share()
    if len(_given) > 4096:  # a long-lived process (a benchmark loop): start afresh
        _given.clear()
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port: int = s.getsockname()[1]
        if (port >> 1) % count == index and port not in _given:
            _given.add(port)
            return port


class _Cleanable(Protocol):
    def _emergency_stop(self) -> None: ...


_LIVE: list[_Cleanable] = []


def register(obj: _Cleanable) -> None:
    """Kill ``obj`` (its ``_emergency_stop``) at interpreter exit if it still runs."""
    if obj not in _LIVE:
        _LIVE.append(obj)


@atexit.register
def _cleanup_all() -> None:
    for obj in reversed(_LIVE):
        with contextlib.suppress(Exception):
            obj._emergency_stop()
    _LIVE.clear()


def tail(path: Path, limit: int = 2000) -> str:
    """The end of a server's log, for an error message."""
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-limit:].decode("utf-8", "replace")


class Stoppable:
    """``with server:`` stops it on leaving (``stop()`` of the subclass)."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
