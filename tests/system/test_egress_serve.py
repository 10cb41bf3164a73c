"""The egress policy of a real ``creditgate serve``: the ports it refuses are the ports it
listens on, also when they were picked by the system (``TRAFFIC_PORT``/``ADMIN_PORT`` 0)."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from meter.accounts.deps import UNREACHABLE
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from meter.store import open_store
from tests.support.serving import CREDITGATE, creditgate_env, stop, tail
from tests.support.settings import OPERATOR_TOKEN, make_settings

WS = "egserve"
APP = f"{WS}_app1"
FUNDS = 1_000_000
BANNER = re.compile(rb"traffic on http://127\.0\.0\.1:(\d+) .* admin on http://127\.0\.0\.1:(\d+)")


async def _api(
    http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, headers=headers, json=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_system_picked_admin_port_is_refused_as_the_gateways_own(
    redis_url: str, tmp_path: Path, rclient: RedisClient, http: aiohttp.ClientSession
) -> None:
    """Red-team (rev-egress): with ``ADMIN_PORT=0`` the policy was built with port 0, so
    the admin port the system picked was an upstream like any loopback port (saved by
    the admin API, dialled by the traffic path) although loopback was allowed only as a
    range. It is the gateway's own port: refused on save (422) and on connect (502
    ``upstream_forbidden``, refunded)."""
    settings = make_settings(redis_url, tmp_path)
    store = open_store(settings.store_url)
    await store.migrate()
    await store.close()
    env = creditgate_env(redis_url=redis_url, store_url=settings.store_url, host="127.0.0.1",
                         traffic_port=0, admin_port=0, workers=1, egress_allow="127.0.0.0/8",
                         operator_token=OPERATOR_TOKEN, state_dir=tmp_path / "state",
                         redis_timeout_s=10.0, log_format="text")  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            CREDITGATE, "serve", env=env, stdout=subprocess.PIPE, stderr=log
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 300)  # a hang bound
            found = BANNER.search(line)
            assert found, (line, tail(log_path))
            traffic, admin = (int(p) for p in found.groups())
            own = f"http://127.0.0.1:{admin}/metrics"
            # traffic: the app's upstream is the admin port (stored past any save check)
            app = {"product": "automation", "upstream_url": own, "funds": FUNDS}
            await seed(rclient, settings, WS, {APP: app})
            hook = f"http://127.0.0.1:{traffic}/hooks/web/{APP}"
            async with http.post(hook, headers={"X-Channel-User-Id": "u1"}, data=b"hi") as resp:
                status, body = resp.status, await resp.read()
            assert b"creditgate_" not in body
            assert (status, orjson.loads(body)["code"]) == (502, "upstream_forbidden")
            assert (await read_balances(rclient, WS)).app[APP] == FUNDS  # refunded
            # admin API: neither an upstream nor a webhook may be the admin port
            base = f"http://127.0.0.1:{admin}"
            status, user = await _api(http, "POST", f"{base}/v1/users", OPERATOR_TOKEN,
                                      {"email": "o@example.com", "name": "O"})  # fmt: skip
            assert status == 201, user
            status, ws = await _api(http, "POST", f"{base}/v1/workspaces", user["token"],
                                    {"name": "Acme"})  # fmt: skip
            assert status == 201, ws
            calls = [
                (f"/v1/workspaces/{ws['id']}/apps", "POST", "upstream_url",
                 {"name": "b", "product": "search", "upstream_url": own}),
                (f"/v1/workspaces/{ws['id']}/webhook", "PUT", "url",
                 {"url": own, "secret": "whsec-" + "e" * 26}),
            ]  # fmt: skip
            for path, method, field, payload in calls:
                status, problem = await _api(http, method, base + path, user["token"], payload)
                assert (status, problem.get("detail")) == (422, f"{field}: {UNREACHABLE}"), path
        finally:
            await stop(proc)
