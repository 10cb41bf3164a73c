"""Watching the process's ``socket.connect`` calls (a Python audit hook), so a test can
prove that a refused address was never even tried: the ``connects`` fixture lists every
address connected to during the test, and only loopback ones can succeed while it
watches. Loaded for every test by ``pytest_plugins`` in tests/conftest.py."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from meter.accounts.addresses import unwrap

_connects: list[Any] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "socket.connect" or _connects is None:
        return
    address = args[1]
    _connects.append(address)
    if isinstance(address, tuple) and not _loopback(address):
        raise PermissionError(f"test tried to connect to {address}")


sys.addaudithook(_audit)  # inert unless a test below watches


def _loopback(address: tuple[Any, ...]) -> bool:
    return unwrap(ipaddress.ip_address(str(address[0]).split("%", 1)[0])).is_loopback


@pytest.fixture
def connects() -> Iterator[list[Any]]:
    """Every address connected to during the test (only loopback ones can succeed)."""
    global _connects
    _connects = seen = []
    try:
        yield seen
    finally:
        _connects = None


def non_loopback(seen: list[Any]) -> list[Any]:
    return [a for a in seen if isinstance(a, tuple) and not _loopback(a)]
