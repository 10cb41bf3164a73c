"""A tenant's host names whose DNS never answers stall no other tenant (the whole gateway).

libc's resolver runs on a few threads per process (uvloop: 4) that such a lookup holds
for resolv.conf's ``timeout`` x ``attempts`` (here 5 s x 2), past any deadline: before
meter/accounts/names.py, four of a hostile tenant's names made every lookup of the
process wait, and another tenant's bot (504) and owner webhook (failed attempt) with it.

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
HOSTILE_NAMES = 24  # more than libc's threads and than a tenant's share of lookups
VICTIM = {"bot.victim.test": "127.0.0.1", "hook.victim.test": "127.0.0.1"}
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
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
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
    out, _ = await proc.communicate()
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
        }
        # The production connect timeout (the helper's is a 60 s hang bound): the victim
        # not stalled is its messages answered within it (a stalled one waited for
        # libc's threads, 5 s x 2, and was 504), and the hostile messages end by it.
        async with seeded_serve(
            rclient, redis_url, tmp_path, "victim", victim, workers=1,
            egress_allow="127.0.0.0/8", traffic_server=traffic_server,
            upstream_connect_timeout_s=2.0,
        ) as gw:  # fmt: skip
            url = f"{gw.traffic}/hooks/web/victim_app1/x"
            assert [await post(http, url, f"v{i}") for i in range(2)] == [200] * 2
            gone = f"{gw.traffic}/hooks/web/victim_app2/x"
            assert await post(http, gone, "v0") == 502  # the bot cannot be reached
            hostile = [
                asyncio.create_task(
                    post(http, f"{gw.traffic}/hooks/web/hostile_app{i % HOSTILE_NAMES}/x", f"h{i}")
                )
                for i in range(3 * HOSTILE_NAMES)
            ]
            # libc's threads would all be held by now
            assert await eventually(lambda: hanging(dns) >= 4)
            during = [await post(http, url, f"w{i}") for i in range(3)]
            statuses = await asyncio.gather(*hostile)
        assert during == [200] * 3, f"the victim stalled: {during}"
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
        creditgate_serve(
            redis_url, tmp_path, operator_token=OPERATOR_TOKEN, egress_allow="127.0.0.0/8"
        ) as gw,
    ):
        a = gw.admin
        body = {"email": "h@x.example", "name": "h"}
        _, h = await call(http, "POST", f"{a}/v1/users", OPERATOR_TOKEN, body)
        _, hws = await call(http, "POST", f"{a}/v1/workspaces", h["token"], {"name": "hostile"})
        body = {"name": "b", "product": "automation"}
        _, app = await call(http, "POST", f"{a}/v1/workspaces/{hws['id']}/apps", h["token"], body)
        # the hostile owner's webhook hangs too (it is delivered by the same process)
        hook = {"url": "http://hook.hang.test/", "secret": "whsec-" + "h" * 26}
        assert (
            await call(http, "PUT", f"{a}/v1/workspaces/{hws['id']}/webhook", h["token"], hook)
        )[0] == 200
        n = itertools.count()
        stop = asyncio.Event()
        saved: list[int] = []

        async def save_hanging_urls() -> None:
            while not stop.is_set():
                patches = (
                    call(http, "PATCH", f"{a}/v1/apps/{app['id']}", h["token"],
                         {"upstream_url": f"http://h{next(n)}.hang.test/"})
                    for _ in range(8)
                )  # fmt: skip
                saved.extend(r[0] for r in await asyncio.gather(*patches))

        spammer = asyncio.create_task(save_hanging_urls())
        assert await eventually(lambda: hanging(dns) >= 4)
        body = {"email": "v@x.example", "name": "v"}
        _, v = await call(http, "POST", f"{a}/v1/users", OPERATOR_TOKEN, body)
        _, vws = await call(http, "POST", f"{a}/v1/workspaces", v["token"], {"name": "victim"})
        hook = {
            "url": rec.url.replace("127.0.0.1", "hook.victim.test"),
            "secret": "whsec-" + "v" * 26,
        }
        st, _ = await call(http, "PUT", f"{a}/v1/workspaces/{vws['id']}/webhook", v["token"], hook)
        assert st == 200
        body = {"amount": "100.00", "reference": "ref-2"}
        st, _ = await call(
            http, "POST", f"{a}/v1/workspaces/{vws['id']}/funds", OPERATOR_TOKEN, body
        )
        assert st == 201
        db = gw.store_url.removeprefix("sqlite:///")
        query = (
            "SELECT attempts, last_error, delivered_at FROM outbox"
            " WHERE workspace_id=? ORDER BY id DESC LIMIT 1"
        )

        def victims_event() -> Any:
            with sqlite3.connect(db) as c:
                return c.execute(query, (vws["id"],)).fetchone()

        done = await eventually(lambda: (row := victims_event()) is not None and (row[1] or row[2]))
        assert done, victims_event()
        stop.set()
        await spammer
        row = victims_event()
        assert row[1] is None, f"the victim's webhook failed: {row}"
        assert row[2] is not None, row
        assert len(rec.got) == 1
        assert set(saved) == {200}  # saving such URLs is accepted (checked at connection)
