"""Host-name lookups of tenants' destinations (meter/accounts/names.py) are bounded.

A stand-in DNS server on 127.0.0.1 (tests/support/dns.py) answers some names and
swallows the queries for others, as a tenant's DNS that never answers would; c-ares is
pointed at it as its configured nameserver. Nothing leaves loopback. The whole gateway
against such a name, in a network namespace where it is the system's only nameserver:
tests/system/test_egress_dns.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.egress import GuardedResolver, UpstreamForbidden
from meter.accounts import names
from meter.accounts.addresses import AddressRefused
from meter.accounts.egress import Policy
from meter.accounts.names import LookupFailed, Names
from tests.support.bot import eventually
from tests.support.dns import StandInDNS, stand_in_dns

ANSWERS = {"bot.b.test": "127.0.0.1", "internal.test": "10.0.0.1"}
POLICY = Policy(["127.0.0.0/8"], own_host="127.0.0.1", own_ports=(8081,))


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StandInDNS]:
    """The stand-in server, the loop's shared Names pointed at it; what is kept is kept
    for the whole test (whatever the machine's speed)."""
    monkeypatch.setattr(names, "ANSWER_S", 3600.0)
    monkeypatch.setattr(names, "FAILURE_S", 3600.0)
    monkeypatch.setattr(names, "PER_TENANT", 4)
    async with stand_in_dns(ANSWERS, hanging=(".hang.test",)) as server:
        shared = Names([server.nameserver])
        monkeypatch.setitem(names._SHARED, asyncio.get_running_loop(), shared)
        yield server
        await shared.close()


async def test_one_tenants_hanging_names_delay_no_other_tenant(dns: StandInDNS) -> None:
    resolver = GuardedResolver(POLICY)
    hostile = [
        asyncio.create_task(resolver.lookup(f"h{i % 10}.hang.test", 80, tenant="A"))
        for i in range(100)
    ]
    assert await eventually(lambda: len(dns.asked) == names.PER_TENANT)
    # A's lookups in progress are its share; the rest of its messages wait their turn
    assert names.shared().in_progress() == names.PER_TENANT
    found = await resolver.lookup("bot.b.test", 80, tenant="B")  # B's is answered meanwhile
    assert [(r["host"], r["port"]) for r in found] == [("127.0.0.1", 80)]
    results = await asyncio.gather(*hostile, return_exceptions=True)
    assert all(isinstance(r, LookupFailed) for r in results), results
    # each hanging name was asked about once (one lookup each), whatever the messages
    assert set(dns.asked) == {"bot.b.test"} | {f"h{i}.hang.test" for i in range(10)}
    assert len({dns.asked[f"h{i}.hang.test"] for i in range(10)}) == 1
    # the failure is kept: asking again sends nothing
    asked = sum(dns.asked.values())
    with pytest.raises(LookupFailed):
        await resolver.lookup("h3.hang.test", 80, tenant="B")
    await resolver.lookup("bot.b.test", 443, tenant="A")  # an answer is kept too
    assert sum(dns.asked.values()) == asked
    assert names.shared().in_progress() == 0


async def test_a_caller_leaving_ends_no_one_elses_lookup(dns: StandInDNS) -> None:
    shared = names.shared()
    staying = [asyncio.create_task(shared.lookup("same.hang.test")) for _ in range(20)]
    with pytest.raises(TimeoutError):  # a message's connect deadline, say
        await asyncio.wait_for(shared.lookup("same.hang.test", tenant="A"), 0.01)
    assert shared.in_progress() == 1  # one query for everyone, still going
    results = await asyncio.gather(*staying, return_exceptions=True)
    assert all(isinstance(r, LookupFailed) for r in results)
    single = await asyncio.gather(shared.lookup("other.hang.test"), return_exceptions=True)
    assert isinstance(single[0], LookupFailed)
    assert dns.asked["same.hang.test"] == dns.asked["other.hang.test"]  # 21 callers, one lookup


async def test_every_address_is_still_checked_at_connection(dns: StandInDNS) -> None:
    resolver = GuardedResolver(POLICY)
    with pytest.raises(UpstreamForbidden, match="private"):
        await resolver.lookup("internal.test", 80, tenant="A")
    with pytest.raises(UpstreamForbidden, match="private"):  # kept, and checked again
        await resolver.lookup("internal.test", 80, tenant="A")
    with pytest.raises(UpstreamForbidden, match="non-canonical"):
        await resolver.lookup("0x7f.1", 80)  # never reaches DNS
    with pytest.raises(LookupFailed, match=r"nothing\.test"):
        await resolver.lookup("nothing.test", 80)  # no such name
    assert "0x7f.1" not in dns.asked


async def test_the_hosts_file_is_honoured(dns: StandInDNS) -> None:
    found = await names.shared().lookup("localhost", socket.AF_INET)
    assert found == [(socket.AF_INET, "127.0.0.1")]
    assert not dns.asked  # /etc/hosts answered


async def test_save_time_check_resolves_without_threads(dns: StandInDNS) -> None:
    with pytest.raises(AddressRefused, match="private"):
        await Policy().check_url("http://internal.test/hook")
    # a name that does not answer in time passes (checked again at each connection);
    # its lookup goes on, shared and bounded, holding no thread
    await Policy().check_url("http://saved.hang.test/hook", resolve_s=0.05)
    assert names.shared().in_progress() == 1
    await Policy().check_url("http://saved.hang.test/hook", resolve_s=0.05)
    assert names.shared().in_progress() == 1
