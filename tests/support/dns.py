"""A stand-in DNS server on 127.0.0.1 (UDP, a free port) for resolver tests.

It answers ``A`` queries for the names in ``answers`` (an IPv4 address each), answers
every other known query with no record, and holds every query of a name ending in one of
``hanging`` unanswered (a DNS server that swallows queries) until :meth:`release`, which
answers each held one (and every later one) with no such name: a resolver stuck on them
then ends at once, not when its own timeouts run out (a test that fails must not wait
for libc's threads before its gateway can stop). Nothing leaves loopback. c-ares
(:mod:`meter.accounts.names`) is pointed at it through its configured nameservers; in a
network namespace, on port 53, it is the system's (tests/system/test_egress_dns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct
from collections import Counter
from collections.abc import AsyncIterator, Iterable

A, IN = 1, 1


def _question(data: bytes) -> tuple[str, int, int]:
    """The name, the end of the question and its type."""
    labels, at = [], 12
    while data[at]:
        n = data[at]
        labels.append(data[at + 1 : at + 1 + n].decode("ascii").lower())
        at += 1 + n
    qtype = struct.unpack_from("!H", data, at + 1)[0]
    return ".".join(labels), at + 5, qtype


class StandInDNS(asyncio.DatagramProtocol):
    def __init__(self, answers: dict[str, str], hanging: Iterable[str]) -> None:
        self.answers = answers
        self.hanging = tuple(hanging)
        self.asked: Counter[str] = Counter()  # queries received per name (all types)
        self.held: list[tuple[bytes, tuple[str, int]]] = []  # hanging queries, unanswered
        self.released = False
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        name, _, _ = _question(data)
        self.asked[name] += 1
        if name.endswith(self.hanging) and not self.released:
            self.held.append((data, addr))  # the lookup hangs until released (or given up)
            return
        self._answer(data, addr)

    def release(self) -> None:
        """Answer every held query, and every later one, with no such name."""
        self.released = True
        held, self.held = self.held, []
        for data, addr in held:
            self._answer(data, addr)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        name, end, qtype = _question(data)
        ip = self.answers.get(name)
        flags = 0x8180 if ip is not None or qtype != A else 0x8183  # NXDOMAIN: unknown
        records = b""
        if ip is not None and qtype == A:
            rdata = ipaddress.IPv4Address(ip).packed
            records = struct.pack("!HHHIH", 0xC00C, A, IN, 30, len(rdata)) + rdata
        head = data[:2] + struct.pack("!HHHHH", flags, 1, 1 if records else 0, 0, 0)
        assert self.transport is not None
        self.transport.sendto(head + data[12:end] + records, addr)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def stand_in_dns(
    answers: dict[str, str], hanging: Iterable[str] = (), port: int = 0
) -> AsyncIterator[StandInDNS]:
    """The server on 127.0.0.1:``port`` (a free one by default)."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(
        lambda: StandInDNS(answers, hanging), local_addr=("127.0.0.1", port)
    )
    try:
        yield server
    finally:
        transport.close()
