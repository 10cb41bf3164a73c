"""A tenant's host names whose DNS never answers stall no other tenant (the whole gateway).

libc's resolver runs on a few threads per process (uvloop: libuv's, 2 lookups at once)
that such a lookup holds for resolv.conf's ``timeout`` x ``attempts``, past any
deadline: before meter/accounts/names.py, a few of a hostile tenant's names made every
lookup of the process wait, and another tenant's bot (504) and owner webhook (failed
attempt) with it.

What is asserted is what the resolver did, never how long it took: while the stand-in
DNS holds every hostile query unanswered (it answers none before the test is done), the
victim's name is asked of it and the victim served. A victim waiting for libc's threads
cannot be while the DNS holds them: resolv.conf makes libc hold a lookup 30 s x 5 (its
most of each), past the tests' hang bound (:data:`HANG_S`). So a broken build fails at
that bound and never hangs: the DNS then answers every held query
(:meth:`StandInDNS.release`), libc's threads are free at once and the gateway stops.
(It was the production 2 s connect and 5 s webhook timeouts against libc's 10 s hold:
an assertion on time, which a busy machine could fail with a victim that was not
stalled; 60 s hang bounds against a 150 s hold, tried before, waited on libc's threads
for minutes on a broken build.)

The system's DNS must be one that swallows queries, so the tests run in a network and
mount namespace of their own (``unshare -mn``, root: CI's case), where loopback is the
only interface and resolv.conf, bind-mounted, names a stand-in DNS server on
127.0.0.1:53 (tests/support/dns.py) that answers the victim's names and never the
hostile ones: nothing leaves the namespace. :func:`test_in_a_namespace` runs this module
there; the tests below it run only inside (``IN_NETNS``). Lookups bounded without a
namespace: tests/integration/test_names.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually, serve
from tests.support.dns import StandInDNS, stand_in_dns
from tests.support.receiver import receiver
from tests.support.serving import creditgate_serve, seeded_serve
from tests.support.settings import OPERATOR_TOKEN, make_settings

IN_NETNS = "CREDITGATE_TEST_IN_NETNS"
ROOT = Path(__file__).resolve().parents[2]
FUNDS = 100 * 200_000
HOSTILE_NAMES = 24  # more than libc's lookups at once and than a tenant's share of them
VICTIM = {
    "bot.victim.test": "127.0.0.1",
    "late.victim.test": "127.0.0.1",  # first asked while the hostile queries are held
    "hook.victim.test": "127.0.0.1",
}
LIBC_TIMEOUT_S, LIBC_ATTEMPTS = 30, 5  # libc holds a lookup 150 s: past HANG_S
HANG_S = 60.0  # a bound for a hang only (the victim is served in milliseconds)
inside = pytest.mark.skipif(not os.environ.get(IN_NETNS), reason="runs in test_in_a_namespace")


def _unshare_refusal() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8) (util-linux, iproute2)"
    if os.geteuid() != 0:
        return "needs root for a network namespace (unshare -mn)"
    return None


@pytest.mark.skipif(os.environ.get(IN_NETNS) is not None, reason="already inside")
async def test_in_a_namespace(tmp_path: Path) -> None:
    refused = _unshare_refusal()
    if refused is not None:
        pytest.skip(refused)
    resolv = f"nameserver 127.0.0.1\noptions timeout:{LIBC_TIMEOUT_S} attempts:{LIBC_ATTEMPTS}\n"
    (tmp_path / "resolv.conf").write_text(resolv)
    shutil.copyfile("/etc/hosts", tmp_path / "hosts")
    script = (
        "set -e; ip link set lo up; "
        f"mount --bind {tmp_path}/resolv.conf /etc/resolv.conf; "
        f"mount --bind {tmp_path}/hosts /etc/hosts; "
        f'exec "$0" -m pytest -q -p no:cacheprovider -n 0 {__file__} -k "not in_a_namespace"'
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-mn", "sh", "-c", script, sys.executable,
        cwd=ROOT, env={**os.environ, IN_NETNS: "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10 * HANG_S):  # a bound for a hang only
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()  # its gateways stop as orphans
        out, _ = await proc.communicate()
        pytest.fail(f"the tests in the namespace hung:\n{out.decode(errors='replace')}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert " passed" in text, text
    assert "skipped" not in text, text


async def post(http: aiohttp.ClientSession, url: str, user: str) -> int:
    async with http.post(url, headers={"X-Channel-User-Id": user}, data=b"hi") as resp:
        await resp.read()
        return resp.status


def hanging(dns: StandInDNS) -> int:
    return sum(1 for name in dns.asked if name.endswith(".hang.test"))


@inside
@pytest.mark.parametrize("traffic_server", ["aiohttp", "fast"])
async def test_hanging_names_of_one_tenant_stall_no_others_bot(
    redis_url: str, tmp_path: Path, rclient: RedisClient, traffic_server: str
) -> None:
    async def hello(request: web.Request) -> web.Response:
        resp = web.Response(text="ok")
        resp.force_close()  # each message a new connection (and a lookup)
        return resp

    bot = web.Application()
    bot.router.add_route("*", "/{t:.*}", hello)
    async with (
        stand_in_dns(VICTIM, hanging=(".hang.test",), port=53) as dns,
        serve(bot) as bot_url,
        aiohttp.ClientSession() as http,
    ):
        port = bot_url.rsplit(":", 1)[1]
        settings = make_settings(redis_url, tmp_path)
        hostile_apps = {
            f"hostile_app{k}": {
                "product": "automation",
                "upstream_url": f"http://h{k}.hang.test:{port}",
                "funds": FUNDS,
            }
            for k in range(HOSTILE_NAMES)
        }
        await seed(rclient, settings, "hostile", hostile_apps)
        victim = {
            "victim_app1": {
                "product": "automation",
                "upstream_url": f"http://bot.victim.test:{port}",
                "funds": FUNDS,
            },
            "victim_app2": {  # a name that does not exist (NXDOMAIN)
                "product": "automation",
                "upstream_url": f"http://gone.victim.test:{port}",
                "funds": FUNDS,
            },
            "victim_app3": {  # a name first looked up while the hostile ones hang
                "product": "automation",
                "upstream_url": f"http://late.victim.test:{port}",
                "funds": FUNDS,
            },
        }
        # The connect timeout is the helper's (a 60 s hang bound, as HANG_S).
        async with seeded_serve(
            rclient, redis_url, tmp_path, "victim", victim, workers=1,
            egress_allow="127.0.0.0/8", traffic_server=traffic_server,
        ) as gw:  # fmt: skip
            try:
                async with asyncio.timeout(2 * HANG_S):  # a bound for a hang only
                    url = f"{gw.traffic}/hooks/web/victim_app1/x"
                    assert [await post(http, url, f"v{i}") for i in range(2)] == [200] * 2
                    gone = f"{gw.traffic}/hooks/web/victim_app2/x"
                    assert await post(http, gone, "v0") == 502  # the bot cannot be reached
                    hostile = [
                        asyncio.create_task(
                            post(http, f"{gw.traffic}/hooks/web/hostile_app{i % HOSTILE_NAMES}/x",
                                 f"h{i}")
                        )
                        for i in range(3 * HOSTILE_NAMES)
                    ]  # fmt: skip
                    # libc's threads would all be held by now (libuv runs 2 lookups)
                    assert await eventually(lambda: hanging(dns) >= 2)
                    late = f"{gw.traffic}/hooks/web/victim_app3/x"
                    during = [await post(http, late, f"w{i}") for i in range(3)]
                    asked = dns.asked["late.victim.test"]  # meanwhile, nothing released
            finally:
                dns.release()  # a broken build's libc threads freed: its gateway stops
            statuses = await asyncio.gather(*hostile)
        assert during == [200] * 3, f"the victim stalled: {during}"
        assert asked >= 1, dns.asked  # its name was asked of the DNS, not of a cache
        # the hostile tenant's own messages: no answer in time (504) or none at all (502)
        assert set(statuses) <= {502, 504}, statuses


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, json=body, headers=headers) as resp:
        return resp.status, await resp.json() if resp.content_type.endswith("json") else None


@inside
async def test_hanging_names_saved_by_one_tenant_stall_no_others_webhook(
    redis_url: str, tmp_path: Path
) -> None:
    async with (
        stand_in_dns(VICTIM, hanging=(".hang.test",), port=53) as dns,
        receiver() as rec,
        aiohttp.ClientSession() as http,
        # The webhook's timeout a hang bound, not the production 5 s (which a busy
        # machine could pass with a victim not stalled).
        creditgate_serve(
            redis_url, tmp_path, operator_token=OPERATOR_TOKEN, egress_allow="127.0.0.0/8",
            webhook_timeout_s=HANG_S,
        ) as gw,
    ):  # fmt: skip
        a = gw.admin
        stop = asyncio.Event()
        saved: list[int] = []
        spammer: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(2 * HANG_S):  # a bound for a hang only
                hostile = await _hostile_owner(http, a)
                spammer = asyncio.create_task(_save_hanging_urls(http, a, hostile, stop, saved))
                assert await eventually(lambda: hanging(dns) >= 2)  # as above
                row = await _victims_webhook(http, gw.store_url, a, rec.url)
                asked = dns.asked["hook.victim.test"]  # meanwhile, nothing released
        finally:
            dns.release()  # a broken build's libc threads freed: its gateway stops
            stop.set()
            if spammer is not None:
                await spammer
        assert row[1] is None, f"the victim's webhook failed: {row}"
        assert row[2] is not None, row
        assert len(rec.got) == 1
        assert asked >= 1, dns.asked  # its name was asked of the DNS, not of a cache
        assert set(saved) == {200}  # saving such URLs is accepted (checked at connection)


async def _hostile_owner(http: aiohttp.ClientSession, a: str) -> tuple[str, str]:
    """A hostile owner whose webhook hangs too (it is delivered by the same process as
    the victim's): its token and its app's id."""
    body = {"email": "h@x.example", "name": "h"}
    _, h = await call(http, "POST", f"{a}/v1/users", OPERATOR_TOKEN, body)
    _, hws = await call(http, "POST", f"{a}/v1/workspaces", h["token"], {"name": "hostile"})
    body = {"name": "b", "product": "automation"}
    _, app = await call(http, "POST", f"{a}/v1/workspaces/{hws['id']}/apps", h["token"], body)
    hook = {"url": "http://hook.hang.test/", "secret": "whsec-" + "h" * 26}
    put = await call(http, "PUT", f"{a}/v1/workspaces/{hws['id']}/webhook", h["token"], hook)
    assert put[0] == 200
    return h["token"], app["id"]


async def _save_hanging_urls(
    http: aiohttp.ClientSession, a: str, hostile: tuple[str, str], stop: asyncio.Event,
    saved: list[int],
) -> None:  # fmt: skip
    """The hostile owner saves new hanging upstream URLs, 8 at a time, until ``stop``."""
    token, app = hostile
    n = itertools.count()
    while not stop.is_set():
        patches = (
            call(http, "PATCH", f"{a}/v1/apps/{app}", token,
                 {"upstream_url": f"http://h{next(n)}.hang.test/"})
            for _ in range(8)
        )  # fmt: skip
        saved.extend(r[0] for r in await asyncio.gather(*patches))


async def _victims_webhook(
    http: aiohttp.ClientSession, store_url: str, a: str, receiver_url: str
) -> Any:
    """A victim owner with a webhook at ``hook.victim.test`` is credited funds: its
    event's outbox row (attempts, last_error, delivered_at) once delivered or failed."""
    body = {"email": "v@x.example", "name": "v"}
    _, v = await call(http, "POST", f"{a}/v1/users", OPERATOR_TOKEN, body)
    _, vws = await call(http, "POST", f"{a}/v1/workspaces", v["token"], {"name": "victim"})
    hook = {
        "url": receiver_url.replace("127.0.0.1", "hook.victim.test"),
        "secret": "whsec-" + "v" * 26,
    }
    st, _ = await call(http, "PUT", f"{a}/v1/workspaces/{vws['id']}/webhook", v["token"], hook)
    assert st == 200
    body = {"amount": "100.00", "reference": "ref-2"}
    st, _ = await call(http, "POST", f"{a}/v1/workspaces/{vws['id']}/funds", OPERATOR_TOKEN, body)
    assert st == 201
    db = store_url.removeprefix("sqlite:///")
    query = (
        "SELECT attempts, last_error, delivered_at FROM outbox"
        " WHERE workspace_id=? ORDER BY id DESC LIMIT 1"
    )

    def victims_event() -> Any:
        with sqlite3.connect(db) as c:
            return c.execute(query, (vws["id"],)).fetchone()

    done = await eventually(lambda: (row := victims_event()) is not None and (row[1] or row[2]))
    assert done, victims_event()
    return victims_event()
