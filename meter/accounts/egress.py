"""Where the gateway may connect to: the SSRF policy for upstream and webhook URLs.

docs/design.md §3: upstream and webhook URLs are ``http(s)`` and may not reach loopback,
link-local, private or the gateway's own addresses unless an operator setting
(``egress_allow``: networks and host names) allows them. The gateway's own listen
addresses (``host`` on ``traffic_port``/``admin_port``; any local address when ``host``
is unspecified) are refused even where the allow-list permits the network, so loopback
bots never expose the admin port. So are the gateway's own ports on every non-public
address (loopback, private, link-local, CGNAT, unique-local, reserved) that only a range
or a wildcard name allows: a sibling replica listens on the same ports at another pod
address, and its admin port must not become an upstream either. An exactly named
destination (a host name without wildcard, or a single-address network) is vouched for
by the operator and may use those ports. A public address on them is judged as any other.

This module only decides; it opens no connection. :meth:`Policy.parse` checks a URL's
form (scheme, no user info, a host, no legacy numeric IPv4 forms such as ``2130706433``
that libc would still map onto an address), :meth:`Policy.check_address` one resolved
address, and :meth:`Policy.check_url` both, resolving host names without blocking the
event loop or a thread (:mod:`meter.accounts.names`). A refused address raises
:class:`~meter.accounts.addresses.AddressRefused`, whose message names the address: for
the operator's log, not for a tenant (the admin API answers that the host resolves to
an address the gateway may not reach). The gateway
applies :meth:`Policy.check_address` again to every address it is about to connect to
(``gateway/egress.py``), so a name that resolves elsewhere later (DNS rebinding) is
still refused.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from config import Settings, SettingsError
from meter.accounts import names
from meter.accounts.addresses import (
    AddressRefused,
    EgressRefused,
    IPAddress,
    Network,
    bind_local,
    check_host_name,
    classify,
    parse_ip,
    unwrap,
)

Resolve = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = {"http": 80, "https": 443}
MAX_URL = 2048  # the longest URL accepted anywhere (API input and egress checks)


@dataclass(frozen=True, slots=True)
class Target:
    """A URL's destination, normalized: lowercase host name or IP address, and port."""

    scheme: str
    host: str
    port: int
    ip: IPAddress | None  # set when the host is an address literal


class Policy:
    """The egress rules of one gateway configuration."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        *,
        own_host: str = "0.0.0.0",
        own_ports: Iterable[int] = (),
        is_local: Callable[[IPAddress], bool] = bind_local,
    ) -> None:
        self.networks: list[Network] = []
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        for entry in allow:
            entry = entry.strip().lower()
            try:
                self.networks.append(ipaddress.ip_network(entry))
            except ValueError:
                if entry.startswith("*."):
                    self.suffixes.append(entry[1:])
                else:
                    self.names.add(check_host_name(entry))
        own = parse_ip(own_host)
        # A name or an unspecified address listens on (or may listen on) every local one.
        self.own_ip = None if own is None or own.is_unspecified else unwrap(own)
        self.own_ports = frozenset(p for p in own_ports if p)
        self._is_local = is_local

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return _policy(
            tuple(settings.egress_allow),
            settings.host,
            (settings.traffic_port, settings.admin_port),
        )

    def name_allowed(self, host: str) -> bool:
        host = host.lower().removesuffix(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def _vouched(self, ip: IPAddress, host: str | None) -> bool:
        """The allow-list names exactly this destination: a host name without a
        wildcard, or a network of one address."""
        if host is not None and host.lower().removesuffix(".") in self.names:
            return True
        plain = unwrap(ip)
        return any(net.num_addresses == 1 and (plain in net or ip in net) for net in self.networks)

    def is_own(self, ip: IPAddress, port: int) -> bool:
        """Whether ``ip:port`` is one of the gateway's own listening sockets."""
        if port not in self.own_ports:
            return False
        ip = unwrap(ip)
        if ip.is_unspecified:
            return True
        if self.own_ip is not None:
            return ip == self.own_ip
        return self._is_local(ip)

    def check_address(self, ip: IPAddress | str, port: int, host: str | None = None) -> None:
        """Refuse ``ip:port`` (reached through the URL host ``host``) unless it is
        public or allowed; the gateway's own sockets, its own ports on any non-public
        address, and unspecified addresses always."""
        addr = ip if not isinstance(ip, str) else parse_ip(ip)
        if addr is None:
            raise AddressRefused(f"{ip!r} is not an IP address")
        if self.is_own(addr, port):
            raise AddressRefused(f"{addr}:{port} is the gateway's own address")
        kind = classify(addr)
        if kind is not None and port in self.own_ports and not self._vouched(addr, host):
            # Replicas share the ports: any internal address may be a sibling's own,
            # unless the operator named this very destination (an exact host name or a
            # single address), not just a range a replica could be in.
            raise AddressRefused(
                f"{addr}:{port} is the gateway's own port on a {kind} address "
                "(another replica's own address)"
            )
        if kind is None:
            return
        if kind == "unspecified":
            raise AddressRefused(f"{addr} is an unspecified address")
        plain = unwrap(addr)
        if host is not None and self.name_allowed(host):
            return
        if any(plain in net or addr in net for net in self.networks):
            return
        shown = f"{addr} ({plain})" if plain != addr else str(addr)
        raise AddressRefused(f"{shown} is a {kind} address")

    def parse(self, url: str) -> Target:
        """The destination of ``url`` if its form is acceptable (nothing is resolved)."""
        if len(url) > MAX_URL:
            raise EgressRefused(f"longer than {MAX_URL} characters")
        if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
            raise EgressRefused("must be ASCII without spaces or control characters")
        if "\\" in url:
            raise EgressRefused("must not contain a backslash")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise EgressRefused(f"not a valid URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES or not parts.netloc:
            raise EgressRefused("must be an absolute http:// or https:// URL")
        if "@" in parts.netloc:
            raise EgressRefused("must not carry a user name or password")
        raw = parts.hostname or ""
        if not raw:
            raise EgressRefused("must name a host")
        if port == 0:
            raise EgressRefused("port 0 cannot be connected to")
        port = port or SCHEMES[scheme]
        if "[" in parts.netloc:
            ip = parse_ip(raw)
            if not isinstance(ip, ipaddress.IPv6Address) or "%" in raw:
                raise EgressRefused(f"host [{raw}] is not an IPv6 address (zone ids refused)")
            return Target(scheme, ip.compressed, port, ip)
        host = check_host_name(raw)
        ip = parse_ip(host)
        return Target(scheme, host if ip is None else ip.compressed, port, ip)

    def check_target(self, target: Target, addresses: Iterable[str] = ()) -> None:
        """Refuse ``target`` if its literal address, or any of ``addresses`` it resolved
        to, may not be reached."""
        if target.ip is not None:
            self.check_address(target.ip, target.port)
            return
        if _is_localhost(target.host) and not self.name_allowed(target.host):
            # RFC 6761: such names are loopback whatever a resolver says.
            addresses = [*addresses, "127.0.0.1"]
        for addr in addresses:
            self.check_address(addr, target.port, target.host)

    async def check_url(
        self,
        url: str,
        *,
        resolve: Resolve | None = None,
        resolve_s: float = 5.0,
        tenant: str | None = None,
    ) -> Target:
        """:meth:`parse` ``url`` and check every address its host resolves to now (by
        default through :mod:`meter.accounts.names`, within ``tenant``'s share of lookups:
        c-ares, never libc's few threads, which a name whose DNS never answers would hold
        past ``resolve_s``). A name that does not resolve (yet, or in time) passes: it is
        checked again at each connection."""
        target = self.parse(url)
        addresses: list[str] = []
        if target.ip is None:
            lookup = resolve or functools.partial(names.addresses, tenant=tenant)
            try:
                addresses = await asyncio.wait_for(lookup(target.host, target.port), resolve_s)
            except (OSError, TimeoutError):
                addresses = []
        self.check_target(target, addresses)
        return target


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


@functools.lru_cache(maxsize=16)
def _policy(allow: tuple[str, ...], host: str, ports: tuple[int, ...]) -> Policy:
    return Policy(allow, own_host=host, own_ports=ports)


def check_settings(settings: Settings) -> None:
    """Refuse operator-configured targets that the policy refuses (start-up check; host
    names are checked when connecting). Raises :class:`~config.SettingsError` naming the setting."""
    policy = Policy.from_settings(settings)
    targets = {"default_upstream_url": settings.default_upstream_url}
    for name, rule in settings.channels.items():
        targets[f"channels.{name}.delivery_url"] = rule.delivery_url
    for setting, url in targets.items():
        if url is None:
            continue
        try:
            policy.check_target(policy.parse(url))
        except EgressRefused as exc:
            raise SettingsError(
                f"CREDITGATE_{setting.upper()}: {exc} (see CREDITGATE_EGRESS_ALLOW)"
            ) from None
