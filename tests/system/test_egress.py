"""SSRF: upstream and webhook URLs may not reach internal or the gateway's own addresses.

Checked when saved (admin API, 422) and again when connecting (502 ``upstream_forbidden``,
bot not called, message refunded; webhook deliveries fail and stay in the outbox), so a
host name that resolves to a refused address later (DNS rebinding) gains nothing.

Every test here watches the process's ``socket.connect`` calls (a Python audit hook):
only loopback may ever be connected to, and the refused private and metadata addresses
must be refused before any connection attempt; the hook also blocks such a connect.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import CollectorRegistry

from config import Settings, SettingsError, load_settings
from gateway import cli
from gateway.app import create_app
from gateway.egress import GuardedResolver, UpstreamForbidden, guarded_session
from gateway.webhooks import http_post
from meter.accounts.addresses import EgressRefused
from meter.accounts.deps import UNREACHABLE
from meter.accounts.egress import Policy, check_settings
from meter.accounts.notifier import Notifier
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from meter.store import OutboxEvent, open_store
from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot
from tests.support.bot import Bot, running_replica, serve
from tests.support.connect_watch import non_loopback
from tests.support.receiver import Receiver, receiver
from tests.support.servers import free_port
from tests.support.settings import LOOPBACK, OPERATOR_TOKEN, make_settings

WS = "egress"
APP = f"{WS}_app1"
FUNDS = 1_000_000
SECRET = "whsec-" + "e" * 26


def test_operator_targets_are_checked_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = "http://169.254.169.254/latest"
    with pytest.raises(SettingsError, match=r"CREDITGATE_DEFAULT_UPSTREAM_URL: .*link-local"):
        check_settings(load_settings(env={}, default_upstream_url=meta))
    with pytest.raises(SettingsError, match=r"CHANNELS\.SLACK\.DELIVERY_URL: .*loopback"):
        create_app(load_settings(env={}, channels={"slack": {"delivery_url": "http://[::1]/"}}))
    own = load_settings(env={}, egress_allow=LOOPBACK, default_upstream_url="http://127.0.0.1:8081")
    with pytest.raises(SettingsError, match="own address"):
        check_settings(own)
    check_settings(
        load_settings(env={}, egress_allow=LOOPBACK, default_upstream_url="http://127.0.0.1:9")
    )
    # `creditgate serve` refuses to start (exit 2, the reason on stderr) before any worker
    monkeypatch.setenv("CREDITGATE_DEFAULT_UPSTREAM_URL", "http://10.0.0.1/")
    assert cli.main(["serve"]) == 2
    assert "CREDITGATE_DEFAULT_UPSTREAM_URL" in capsys.readouterr().err


# ------------------------------------------------------------------ on save: the admin API

SAVE_REFUSED = [
    "http://127.0.0.1:9/x",
    "http://[::1]:9/",
    "http://[::ffff:127.0.0.1]/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://[fe80::1]/",
    "http://localhost:9/",  # a host name, resolved on save
    "http://user:pass@bot.example/",
    "file:///etc/passwd",
    "ftp://bot.example/",
]


@pytest.fixture
async def strict_admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    """An admin server whose egress policy allows nothing internal (loopback neither)."""
    settings = admin_settings(redis_url, tmp_path, egress_allow=[])
    async with admin_server(settings) as admin:
        yield admin


async def test_admin_api_refuses_internal_urls_on_save(
    strict_admin: Admin, connects: list[Any]
) -> None:
    admin = strict_admin
    token, ws = await admin.owner_workspace()
    app = (
        await admin.ok(
            "POST", f"/v1/workspaces/{ws}/apps", token, {"name": "b", "product": "search"}
        )
    )["id"]
    new = {"name": "x", "product": "search"}
    for url in SAVE_REFUSED:
        calls = [
            ("POST", f"/v1/workspaces/{ws}/apps", new | {"upstream_url": url}, "upstream_url"),
            ("PATCH", f"/v1/apps/{app}", {"upstream_url": url}, "upstream_url"),
            ("PUT", f"/v1/workspaces/{ws}/webhook", {"url": url, "secret": SECRET}, "url"),
        ]
        for method, path, body, field in calls:
            status, problem = await admin.api(method, path, token, body)
            assert (status, problem["code"], problem["field"]) == (422, "invalid_input", field), (
                url,
                path,
                problem,
            )
            if url.startswith(("http://localhost", "http://10.", "http://[::1]")):
                assert problem["detail"] == f"{field}: {UNREACHABLE}", problem
    # nothing was changed by any of them
    assert [a.id for a in await admin.store.list_apps(ws)] == [app]
    assert (await admin.ok("GET", f"/v1/apps/{app}", token))["upstream_url"] is None
    stored = await admin.store.get_workspace(ws)
    assert stored is not None
    assert stored.webhook_url is None
    # decided without connecting anywhere (the test client and Redis are all there is)
    assert non_loopback(connects) == []
    assert [a for a in connects if a[1] in (9, 80)] == []


async def test_admin_api_refuses_the_gateways_own_port_even_with_loopback_allowed(
    redis_url: str, tmp_path: Path, bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused without telling the tenant which address (the operator's log says it): a
    tenant must not map internal names through the answers."""
    caplog.set_level(logging.INFO, logger="meter.accounts.deps")
    port = free_port()
    settings = admin_settings(
        redis_url,
        tmp_path,
        host="127.0.0.1",
        admin_port=port,
    )
    async with admin_server(settings) as admin:
        token, ws = await admin.owner_workspace()
        app = await admin.new_app(token, ws, bot.url, name="b", product="search")
        for url in (f"http://127.0.0.1:{port}/metrics", f"http://localhost:{port}/readyz"):
            status, problem = await admin.api(
                "PATCH", f"/v1/apps/{app}", token, {"upstream_url": url}
            )
            assert status == 422
            assert problem["field"] == "upstream_url"
            assert problem["detail"] == f"upstream_url: {UNREACHABLE}"
            assert problem["errors"] == [{"field": "upstream_url", "message": UNREACHABLE}]
        assert (await admin.ok("GET", f"/v1/apps/{app}", token))["upstream_url"] == bot.url
        status, problem = await admin.api(
            "PATCH", f"/v1/apps/{app}", token, {"upstream_url": "http://0x7f.1/"}
        )  # the URL's form: said as it is
        assert (status, problem["field"]) == (422, "upstream_url")
        assert "non-canonical" in problem["detail"]
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for host in ("127.0.0.1", "localhost"):
        assert (
            f"upstream_url http://{host}:{port} refused by the egress policy: "
            f"127.0.0.1:{port} is the gateway's own address"
        ) in logged, logged


# ------------------------------------------------------------------ on connect: the proxy


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """The gateway in-process on the traffic and admin ports its settings name."""
    store = open_store(settings.store_url)
    await store.migrate()
    try:
        gw = create_app(settings, store=store, registry=CollectorRegistry())
        async with (
            serve(gw.traffic, settings.traffic_port) as url,
            serve(gw.admin, settings.admin_port) as admin_url,
        ):
            yield url, admin_url
    finally:
        await store.close()


async def post(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.post(url, headers={"X-Channel-User-Id": "u1"}, data=b"hi") as resp:
        body = await resp.json(content_type=None)
        return resp.status, body


def app_with(upstream: str) -> dict[str, Any]:
    return {"product": "automation", "upstream_url": upstream, "funds": FUNDS}


async def balance(rclient: RedisClient, app: str) -> int:
    return (await read_balances(rclient, WS)).app[app]


async def test_upstream_refused_at_connect_time_is_502_uncharged(
    redis_url: str,
    tmp_path: Path,
    bot: Bot,
    http: aiohttp.ClientSession,
    rclient: RedisClient,
    connects: list[Any],
) -> None:
    """Loopback not allowed: upstreams stored past the save check (the name resolved
    elsewhere then: DNS rebinding) are refused when connecting."""
    port = bot.url.rsplit(":", 1)[1]
    upstreams = {
        f"{WS}_name": f"http://localhost:{port}",  # resolved at connect time: 127.0.0.1
        f"{WS}_literal": bot.url,  # an IP literal: aiohttp skips the resolver
        f"{WS}_mapped": f"http://[::ffff:127.0.0.1]:{port}",
        f"{WS}_legacy": f"http://2130706433:{port}",
        f"{WS}_meta": "http://169.254.169.254/latest/meta-data",
        f"{WS}_private": "http://10.0.0.1:8080",
        f"{WS}_v6ll": "http://[fe80::1]:8080",
    }
    settings = make_settings(
        redis_url, tmp_path, egress_allow=[], traffic_port=free_port(), admin_port=free_port()
    )
    apps = {
        a: {"product": "automation", "upstream_url": u, "funds": FUNDS}
        for a, u in upstreams.items()
    }
    await seed(rclient, settings, WS, apps)
    async with gateway(settings) as (url, _):
        for app in upstreams:
            status, problem = await post(http, f"{url}/hooks/web/{app}/chat")
            assert (status, problem["code"]) == (502, "upstream_forbidden"), (app, problem)
            assert await balance(rclient, app) == FUNDS, app  # refunded
    assert bot.count() == 0
    # not one connection towards a refused address, nor to the bot's port
    assert non_loopback(connects) == []
    assert [a for a in connects if isinstance(a, tuple) and a[1] == int(port)] == []


async def test_the_gateways_own_ports_are_refused_with_loopback_allowed(
    redis_url: str, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    traffic, admin = free_port(), free_port()
    # IPv4 loopback only: ``localhost`` may also resolve to ::1 (c-ares does, RFC 6761,
    # whatever /etc/hosts lists), which an allow-list naming ::1 would vouch for.
    settings = make_settings(
        redis_url, tmp_path, traffic_port=traffic, admin_port=admin, egress_allow=["127.0.0.0/8"]
    )
    upstreams = {
        f"{WS}_good": bot.url,
        f"{WS}_admin": f"http://127.0.0.1:{admin}",
        f"{WS}_adminname": f"http://localhost:{admin}",
        f"{WS}_self": f"http://127.0.0.1:{traffic}/hooks/web/{WS}_self",
    }
    apps = {
        a: {"product": "automation", "upstream_url": u, "funds": FUNDS}
        for a, u in upstreams.items()
    }
    await seed(rclient, settings, WS, apps)
    async with gateway(settings) as (url, admin_url):
        async with http.get(f"{admin_url}/metrics") as resp:
            assert resp.status == 200  # it is there, and it serves metrics
        assert (await post(http, f"{url}/hooks/web/{WS}_good/ok"))[0] == 200
        assert await balance(rclient, f"{WS}_good") == FUNDS - 200_000
        for app in (f"{WS}_admin", f"{WS}_adminname"):
            for tail in ("/metrics", "/readyz"):
                status, problem = await post(http, f"{url}/hooks/web/{app}{tail}")
                assert (status, problem["code"]) == (502, "upstream_forbidden")
            assert await balance(rclient, app) == FUNDS
        status, problem = await post(http, f"{url}/hooks/web/{WS}_self")
        assert (status, problem["code"]) == (502, "upstream_forbidden")
        assert await balance(rclient, f"{WS}_self") == FUNDS
    assert bot.count() == 1


async def test_websocket_upstream_refused_at_the_upgrade(
    redis_url: str, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    port = bot.url.rsplit(":", 1)[1]
    settings = make_settings(
        redis_url, tmp_path, egress_allow=[], traffic_port=free_port(), admin_port=free_port()
    )
    await seed(rclient, settings, WS, {APP: app_with(f"http://localhost:{port}")})
    async with gateway(settings) as (url, _):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{url}/hooks/web/{APP}/ws?user=u1")
        assert err.value.status == 502
    assert bot.ws_messages == []
    assert bot.count() == 0
    assert await balance(rclient, APP) == FUNDS


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class StaticDNS(AbstractResolver):
    """A DNS answer fixed by the test: what a rebinding name resolves to right now."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=_family(a),
                proto=0,
                flags=0,
            )
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_addresses_before_connecting(
    bot: Bot, connects: list[Any]
) -> None:
    port = int(bot.url.rsplit(":", 1)[1])
    dns = StaticDNS(
        {
            "mixed.test": ["10.0.0.1", "169.254.169.254", "127.0.0.1"],
            "meta.test": ["169.254.169.254", "fd00::1"],
        }
    )
    policy = Policy(LOOPBACK, own_host="127.0.0.1", own_ports=(8081,))
    conn = aiohttp.TCPConnector(resolver=GuardedResolver(policy, dns), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(f"http://mixed.test:{port}/ok") as resp:
            assert resp.status == 200  # over the one allowed address
        with pytest.raises(UpstreamForbidden, match="private"):
            await s.get(f"http://meta.test:{port}/")
        with pytest.raises(UpstreamForbidden, match="non-canonical"):
            await s.get(f"http://0x7f.1:{port}/")  # such a name never reaches DNS
    assert bot.count() == 1
    assert connects == [("127.0.0.1", port)]


# ------------------------------------------------------------------ owner webhooks


async def enqueue(admin_or_store: Any, ws: str, event_id: str) -> None:
    ev = OutboxEvent(ws, f"{ws}:{event_id}", "balance.low", {"id": event_id}, 0)
    await admin_or_store.enqueue(ev)


async def test_webhook_to_a_refused_address_is_never_attempted(
    redis_url: str, tmp_path: Path, connects: list[Any]
) -> None:
    settings = make_settings(redis_url, tmp_path)  # loopback allowed
    store = open_store(settings.store_url)
    await store.migrate()
    try:
        from meter.store import User, Workspace

        await store.create_user(User("u0001", "o@example.com", "O", "h" * 64, 0))
        await store.create_workspace(Workspace(WS, "Acme", "u0001", 0))
        async with guarded_session(settings) as session:
            notifier = Notifier(store, http_post(session, 2.0), timeout_s=2.0)
            for i, url in enumerate(
                ["http://169.254.169.254/hook", "http://10.0.0.1/hook", "http://[fd00::1]/hook"]
            ):
                await store.set_webhook(WS, url, SECRET)  # past the save check
                await enqueue(store, WS, f"e{i}")
                assert await notifier.deliver_due() == 0
                ev = await store.get_event(f"{WS}:e{i}")
                assert ev is not None
                assert ev.delivered_at is None
                assert ev.attempts == 1
                assert ev.last_error
                assert "UpstreamForbidden" in ev.last_error
                assert ev.next_attempt_at is not None  # kept for a retry
    finally:
        await store.close()
    assert connects == []


async def test_webhook_delivery_loop_obeys_the_policy(redis_url: str, tmp_path: Path) -> None:
    """The admin application's delivery loop: a real receiver on loopback (not allowed
    here) is never called; the event stays in the outbox with the reason."""
    settings = admin_settings(redis_url, tmp_path, egress_allow=[])
    rec: Receiver
    async with receiver() as rec, admin_server(settings) as admin:
        port = rec.url.split(":")[2].split("/")[0]
        _, ws = await admin.owner_workspace()
        await admin.store.set_webhook(ws, f"http://localhost:{port}/hook", SECRET)
        await enqueue(admin.store, ws, "e1")
        ev: OutboxEvent | None = None
        for _ in range(1200):  # the loop polls every 50 ms here
            ev = await admin.store.get_event(f"{ws}:e1")
            if ev is not None and ev.attempts:
                break
            await asyncio.sleep(0.05)
        assert ev is not None
        assert ev.attempts >= 1
        assert ev.delivered_at is None
        assert ev.last_error
        assert "loopback" in ev.last_error
    assert rec.got == []


# ------------------------------------------------------------------ sibling replicas

# Replicas listen on the same traffic and admin ports at other (pod) addresses: those
# ports are refused on every non-public address that only a range or a wildcard allows.
ALLOW_ALL_INTERNAL = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "192.0.2.0/24",
    "fc00::/7",
    "fe80::/10",
    "::/127",
    "8.8.8.0/24",
    "*.svc.cluster.local",
]
SIBLINGS = [
    ("127.0.0.2", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.3.4", "private"),
    ("192.168.1.9", "private"),
    ("100.64.0.7", "CGNAT"),
    ("169.254.10.10", "link-local"),
    ("192.0.2.1", "reserved"),
    ("fd00::1", "private"),
    ("fe80::1", "link-local"),
    ("::1", "loopback"),
    ("::ffff:10.0.0.5", "private"),
    ("64:ff9b::a00:5", "private"),  # NAT64 of 10.0.0.5
]


@pytest.mark.parametrize(("addr", "kind"), SIBLINGS)
@pytest.mark.parametrize("own_host", ["127.0.0.1", "0.0.0.0", "10.0.0.4"])
def test_own_ports_are_refused_on_every_non_public_address(
    addr: str, kind: str, own_host: str
) -> None:
    p = Policy(ALLOW_ALL_INTERNAL, own_host=own_host, own_ports=(8080, 8081))
    p.check_address(addr, 9000)  # the allow-list permits the address itself
    # (with host 0.0.0.0 a loopback address may be this host's own, said as such)
    why = rf"gateway's own (address|port on a .*{kind})"
    for port in (8080, 8081):
        with pytest.raises(EgressRefused, match=why):
            p.check_address(addr, port)
        # an allowed name that resolves there gains nothing
        with pytest.raises(EgressRefused, match=why):
            p.check_address(addr, port, host="bot.ns.svc.cluster.local")


def test_an_exactly_named_destination_may_use_the_gateways_ports() -> None:
    """A bot in the cluster on 8080: the operator names that host (or its one address),
    which vouches for it; a range or a wildcard that a replica could be in does not."""
    p = Policy(
        ["bot.ns.svc.cluster.local", "10.0.0.7/32", "10.1.0.0/16", "*.svc.local"],
        own_host="10.0.0.4",
        own_ports=(8080, 8081),
    )
    p.check_address("10.0.0.5", 8080, host="bot.ns.svc.cluster.local")
    p.check_address("10.0.0.7", 8081)
    for addr, host in (("10.1.2.3", None), ("10.1.2.3", "x.svc.local")):
        with pytest.raises(EgressRefused, match="own port"):
            p.check_address(addr, 8080, host=host)
    with pytest.raises(EgressRefused, match="own address"):
        p.check_address("10.0.0.4", 8080, host="bot.ns.svc.cluster.local")  # itself: never


def test_own_ports_on_public_addresses_follow_the_usual_rules() -> None:
    for allow in ([], ALLOW_ALL_INTERNAL):
        p = Policy(allow, own_host="127.0.0.1", own_ports=(8080, 8081))
        for addr in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"):
            p.check_address(addr, 8081)
            p.check_address(addr, 8080)
    # and a public address that IS this gateway's own stays refused
    with pytest.raises(EgressRefused, match="own address"):
        Policy([], own_host="8.8.8.8", own_ports=(8081,)).check_address("8.8.8.8", 8081)


async def test_own_ports_of_siblings_refused_on_save_and_at_start_up(connects: list[Any]) -> None:
    p = Policy(ALLOW_ALL_INTERNAL, own_host="0.0.0.0", own_ports=(8080, 8081))

    async def pod(host: str, port: int) -> list[str]:
        return ["10.0.0.5"]

    for url in ("http://bot.ns.svc.cluster.local:8081/metrics", "http://10.0.0.5:8080/"):
        with pytest.raises(EgressRefused, match="own port"):
            await p.check_url(url, resolve=pod)
    await p.check_url("http://bot.ns.svc.cluster.local:9000/", resolve=pod)
    sibling = load_settings(
        env={}, egress_allow=["10.0.0.0/8"], default_upstream_url="http://10.0.0.5:8081"
    )
    with pytest.raises(SettingsError, match=r"CREDITGATE_DEFAULT_UPSTREAM_URL: .*own port"):
        check_settings(sibling)
    assert connects == []


async def test_a_sibling_replicas_ports_are_not_upstreams(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    http: aiohttp.ClientSession,
    connects: list[Any],
) -> None:
    """Red-team finding 11: replica A (127.0.0.1) and replica B (127.0.0.2) on the same
    ports, 127/8 allowed as a pod range would be. An app whose upstream is B's admin or
    traffic port is refused by A (502, refunded) without A ever connecting to B."""
    traffic, admin = free_port(), free_port()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ports = {"traffic_port": traffic, "admin_port": admin}
    a = make_settings(redis_url, tmp_path / "a", **ports)
    b = make_settings(redis_url, tmp_path / "b", **ports).model_copy(update={"host": "127.0.0.2"})
    upstreams = {
        f"{WS}_sibadmin": f"http://127.0.0.2:{admin}",
        f"{WS}_sibtraffic": f"http://127.0.0.2:{traffic}/hooks/web/{WS}_sibtraffic",
        f"{WS}_sibmapped": f"http://[::ffff:127.0.0.2]:{admin}",
    }
    await seed(rclient, a, WS, {app: app_with(u) for app, u in upstreams.items()})
    async with running_replica(a, "127.0.0.1"), running_replica(b, "127.0.0.2"):
        async with http.get(f"http://127.0.0.2:{admin}/metrics") as resp:
            assert resp.status == 200
            assert b"creditgate_" in await resp.read()
        watched = len(connects)
        for app in upstreams:
            for tail in ("/metrics", "/readyz"):
                url = f"http://127.0.0.1:{traffic}/hooks/web/{app}{tail}"
                async with http.get(url, headers={"X-Channel-User-Id": "m"}) as resp:
                    status, body = resp.status, await resp.read()
                assert b"creditgate_" not in body, f"{status}: replica B's /metrics: {body[:120]!r}"
                assert (status, orjson.loads(body)["code"]) == (502, "upstream_forbidden"), app
            assert await balance(rclient, app) == FUNDS, app  # refunded
    towards_b = [c for c in connects[watched:] if isinstance(c, tuple) and c[0] == "127.0.0.2"]
    assert towards_b == []


# ------------------------------------------------------------------ admin port: Via


@pytest.mark.parametrize("via", ["1.1 creditgate", "1.0 fred, 1.1 creditgate"])
async def test_admin_port_refuses_requests_forwarded_by_the_gateway(
    redis_url: str, tmp_path: Path, via: str
) -> None:
    """A request that carries the gateway's own ``Via`` came through a traffic port:
    508 ``loop_detected`` on every admin route, before any handler runs."""
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings) as admin:
        _, token = await admin.new_user("owner")
        before = await snapshot(admin)
        forwarded = {"Via": via}
        calls = [
            ("POST", "/v1/workspaces", token, {"name": "Acme"}),
            ("POST", "/v1/users", OPERATOR_TOKEN, {"email": "x@example.com", "name": "x"}),
            ("GET", "/metrics", None, None),
            ("GET", "/readyz", None, None),
            ("GET", "/no/such/route", None, None),
        ]
        for method, path, auth, body in calls:
            status, problem = await admin.api(method, path, auth, body, headers=forwarded)
            assert (status, problem["code"]) == (508, "loop_detected"), (path, problem)
            assert "creditgate_" not in str(problem)
        assert await snapshot(admin) == before  # nothing ran
        # the same calls without the gateway's Via entry (or with another proxy's) work
        other = {"Via": "1.1 nginx"}
        acme = {"name": "Acme"}
        status, _ = await admin.api("POST", "/v1/workspaces", token, acme, headers=other)
        assert status == 201
        status, text = await admin.api("GET", "/metrics", headers=other)
        assert status == 200
        assert "creditgate_" in text
        # a proxy whose name merely holds the gateway's is no loop (gateway/via.py)
        for named in ("1.1 creditgate-ingress", "1.1 my-creditgateway", "1.0 foo (creditgate)"):
            status, _ = await admin.api("POST", "/v1/workspaces", token, acme,
                                        headers={"Via": named})  # fmt: skip
            assert status == 201, named
            status, _ = await admin.api("GET", "/healthz", headers={"Via": named})
            assert status == 200, named
