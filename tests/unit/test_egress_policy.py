"""The egress policy itself, no server: which upstream and webhook URLs and addresses are
refused, and why (its enforcement on save and at connect time: tests/system/test_egress.py).
``connects`` proves no connection is even attempted."""

from __future__ import annotations

from typing import Any

import pytest

from config import SettingsError, load_settings
from meter.accounts.addresses import EgressRefused
from meter.accounts.egress import Policy
from tests.support.settings import LOOPBACK

BARE = Policy([], own_host="127.0.0.1", own_ports=(8080, 8081))
LOOP = Policy(LOOPBACK, own_host="127.0.0.1", own_ports=(8080, 8081))

REFUSED_ALWAYS = [
    ("http://2130706433/", "non-canonical"),
    ("http://0x7f.1/", "non-canonical"),
    ("http://0177.0.0.1/", "non-canonical"),
    ("http://127.1/", "non-canonical"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://0.0.0.0:9000/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 of 169.254.169.254
    ("http://[::ffff:0:a00:1]/", r"::ffff:0:a00:1 \(10\.0\.0\.1\) is a private"),  # SIIT
    ("http://[::ffff:0:a9fe:a9fe]/", "link-local"),
    ("http://[64:ff9b:1::a00:1]/", "local-use NAT64"),  # RFC 8215, any prefix length
    ("http://[64:ff9b:1:a00:1::]/", "local-use NAT64"),  # 10.0.0.1 at /48
    ("http://[2002:a00:1::]/", "private"),  # 6to4 of 10.0.0.1
    ("http://192.0.0.8/", "reserved"),  # IETF protocol assignments
    ("http://192.0.0.170/", "reserved"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://192.0.2.1/", "reserved"),
    ("file:///etc/passwd", "http"),
    ("ftp://files.example/x", "http"),
    ("gopher://127.0.0.1:70/", "http"),
    ("http://user:pass@bot.example/", "user name"),
    ("http://bot.example@127.0.0.1/", "user name"),
    ("http://127.0.0.1:8081/metrics", "own address"),  # the admin port
    ("http://127.0.0.1:8080/hooks/web/x_y", "own address"),  # the traffic port
    ("http://[::ffff:127.0.0.1]:8081/metrics", "own address"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http:///no-host", "http"),
    ("http://a..b/", "host name"),
]
REFUSED_UNLESS_LOOPBACK_ALLOWED = [
    "http://127.0.0.1/",
    "http://127.0.0.2:9000/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:0:7f00:1]/",  # IPv4-translated (SIIT)
    "http://localhost:9000/",
    "http://sub.localhost/",
    "http://127.0.0.1./",
]


@pytest.mark.parametrize(("url", "why"), REFUSED_ALWAYS)
async def test_refused_whatever_loopback_allows(url: str, why: str, connects: list[Any]) -> None:
    for policy in (BARE, LOOP):
        with pytest.raises(EgressRefused, match=why):
            await policy.check_url(url)
    assert connects == []


@pytest.mark.parametrize("url", REFUSED_UNLESS_LOOPBACK_ALLOWED)
async def test_loopback_only_where_allowed(url: str, connects: list[Any]) -> None:
    with pytest.raises(EgressRefused, match="loopback"):
        await BARE.check_url(url)
    await LOOP.check_url(url)
    assert connects == []


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/", "https://[2606:4700::1111]:8443/x", "http://bot.invalid/"]
)
async def test_public_addresses_and_unresolvable_names_pass(url: str) -> None:
    # a name that does not resolve yet passes on save; connecting checks it again
    await BARE.check_url(url, resolve_s=2.0)


def test_allow_list_by_network_and_name() -> None:
    p = Policy(["10.1.0.0/16", "bot.internal", "*.corp"], own_ports=(8081,))
    p.check_address("10.1.2.3", 80)
    with pytest.raises(EgressRefused, match="private"):
        p.check_address("10.2.0.1", 80)
    p.check_address("192.168.0.7", 80, host="bot.internal")
    p.check_address("192.168.0.7", 80, host="a.b.corp")
    with pytest.raises(EgressRefused, match="private"):
        p.check_address("192.168.0.7", 80, host="corp-evil.example")
    with pytest.raises(EgressRefused, match="unspecified"):
        Policy(["0.0.0.0/0"]).check_address("0.0.0.0", 80)


def test_own_address_when_listening_on_every_interface() -> None:
    """host 0.0.0.0: every local address on the gateway's ports is refused, even allowed."""
    p = Policy(["0.0.0.0/0", "::/0"], own_host="0.0.0.0", own_ports=(8080, 8081))
    own = ("127.0.0.1", "127.0.0.53", "::1", "::ffff:127.0.0.1", "::ffff:0:7f00:1", "0.0.0.0")
    for addr in own:
        with pytest.raises(EgressRefused, match="own address"):
            p.check_address(addr, 8081)
    p.check_address("127.0.0.1", 9000)  # another port: allowed by the list
    p.check_address("8.8.8.8", 8081)  # public: never an address of this host


def test_egress_allow_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDITGATE_EGRESS_ALLOW", " 127.0.0.0/8, ::1 ,Bot.Internal,*.corp")
    assert load_settings().egress_allow == [
        "127.0.0.0/8",
        "::1/128",
        "bot.internal",
        "*.corp",
    ]
    monkeypatch.setenv("CREDITGATE_EGRESS_ALLOW", '["10.0.0.0/8"]')
    assert load_settings().egress_allow == ["10.0.0.0/8"]
    monkeypatch.delenv("CREDITGATE_EGRESS_ALLOW")
    assert load_settings().egress_allow == []
    for bad in ("127.1", "10.0.0.1/8", "no spaces please", "0x7f000001"):
        with pytest.raises(SettingsError, match="CREDITGATE_EGRESS_ALLOW"):
            load_settings(env={}, egress_allow=[bad])
