"""IP addresses and host names as the egress policy judges them (:mod:`meter.accounts.egress`):
the address classes refused by default, IPv4 carried in IPv6, canonical host names."""

from __future__ import annotations

import ipaddress
import re
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A host name: ASCII letters, digits, '-' and '_' in dot-separated labels (international
# names in their xn-- form), so the name checked is the name connected to.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")

# Address classes that are refused unless allowed, checked in this order; the name is
# what a refusal says. Anything else that is not globally routable is "reserved".
_V4_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("0.0.0.0/8",)),
    ("loopback", ("127.0.0.0/8",)),
    ("link-local", ("169.254.0.0/16",)),
    ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("shared (CGNAT)", ("100.64.0.0/10",)),
    ("multicast", ("224.0.0.0/4",)),
    ("broadcast", ("255.255.255.255/32",)),
    ("reserved", ("192.0.0.0/24",)),  # IETF protocol assignments (RFC 6890)
)
_V6_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unspecified", ("::/128",)),
    ("loopback", ("::1/128",)),
    ("link-local", ("fe80::/10",)),
    ("site-local", ("fec0::/10",)),
    ("private", ("fc00::/7",)),
    ("multicast", ("ff00::/8",)),
    # RFC 8215: where the IPv4 address sits depends on the prefix length the network's
    # translator uses (/48 to /96), so no one reading of it is exact: all of it is refused.
    ("local-use NAT64", ("64:ff9b:1::/48",)),
)


def _nets(table: tuple[tuple[str, tuple[str, ...]], ...]) -> list[tuple[str, list[Network]]]:
    return [(name, [ipaddress.ip_network(n) for n in nets]) for name, nets in table]


_CLASSES = {4: _nets(_V4_CLASSES), 6: _nets(_V6_CLASSES)}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix
_V4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # RFC 2765 (SIIT)
_V4_COMPAT = ipaddress.IPv6Network("::/96")


class EgressRefused(ValueError):
    """A URL or address the gateway may not reach; the message says why."""


class AddressRefused(EgressRefused):
    """An address (resolved, or written in the URL) the policy refuses. The message names
    the address: it is for the operator's log, not for a tenant mapping internal names."""


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, 6to4,
    well-known NAT64), or ``ip``: ``::ffff:127.0.0.1`` and ``::ffff:0:7f00:1`` reach
    127.0.0.1 and are judged as such."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64 or ip in _V4_TRANSLATED or (ip in _V4_COMPAT and int(ip) > 1):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused by default ("loopback", "private", ...), or ``None`` for a
    public address."""
    ip = unwrap(ip)
    for name, nets in _CLASSES[ip.version]:
        if any(ip in net for net in nets):
            return name
    return None if ip.is_global else "reserved"


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an IP address (IPv6 with or without brackets), else ``None``."""
    try:
        return ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> str:
    """Why a host that ends in a number is refused (WHATWG: it is an IPv4 address, and
    only the dotted-quad form is accepted)."""
    try:
        meant = socket.inet_aton(host)
    except OSError:
        return f"host {host!r} is not a valid IPv4 address"
    return (
        f"host {host!r} is a non-canonical IPv4 address (it means "
        f"{ipaddress.IPv4Address(meant)}); write four decimal numbers"
    )


def check_host_name(host: str) -> str:
    """``host`` lowercased without one trailing dot, if it is a well-formed host name (or
    a canonical IPv4 address); :class:`EgressRefused` otherwise."""
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise EgressRefused(f"host {host!r} is not a valid host name")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise EgressRefused(_legacy_ipv4(name)) from None
    return name


def bind_local(ip: IPAddress) -> bool:
    """Whether ``ip`` is an address of this host: binding to it succeeds (no packet)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True
