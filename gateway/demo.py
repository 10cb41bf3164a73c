"""``creditgate demo``: everything on one machine, on embedded defaults.

Starts a throwaway ``redis-server`` and the sample echo bot on free loopback ports
(files in ``./.demo/``), a fresh SQLite store, seeds a demo workspace with two apps -
``ample`` (the workspace's $500 free credits) and ``tight`` (no free credits, $0.60 of
its own: three sessions) - prints curl lines to try, then serves with one worker on
127.0.0.1 until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import Settings, load_catalog, load_settings

log = logging.getLogger(__name__)
DEMO_DIR = Path(".demo")
HOST = "127.0.0.1"
INSTALL_HINT = (
    "creditgate demo needs redis-server on PATH: "
    "`apt-get install redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
)


@dataclass(frozen=True)
class Seeded:
    ws: str
    ample: str
    tight: str
    owner_token: str | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port}")


def run_demo(config: str | None, overrides: dict[str, Any]) -> int:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    base = DEMO_DIR.resolve()
    base.mkdir(exist_ok=True)
    for stale in base.glob("creditgate.db*"):
        stale.unlink()  # Redis starts empty, so the store does too
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_port = _free_port()
        with (base / "redis.log").open("ab") as rlog:
            procs.append(
                subprocess.Popen(
                    [
                        redis_bin,
                        "--port",
                        str(redis_port),
                        "--bind",
                        HOST,
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(base),
                    ],
                    stdout=rlog,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait_port(redis_port, procs[-1], "redis-server")
        bot_port = _free_port()
        procs.append(
            subprocess.Popen([sys.executable, "-m", "gateway.demo_bot", "--port", str(bot_port)])
        )
        _wait_port(bot_port, procs[-1], "demo bot")
        settings = load_settings(
            config,
            **{
                "redis_url": f"redis://{HOST}:{redis_port}/0",
                "store_url": f"sqlite:///{base}/creditgate.db",
                "state_dir": f"{base}/state",
                "host": HOST,
                "workers": 1,
                "operator_token": secrets.token_urlsafe(24),
                "topup_min": "0.20",
                "log_format": "text",
                # The sample bot listens on loopback, which the egress policy refuses
                # unless allowed; only its address is (the gateway's own ports stay shut).
                "egress_allow": [HOST],
                **overrides,
            },
        )
        seeded = asyncio.run(seed_demo(settings, f"http://{HOST}:{bot_port}"))
        print(instructions(settings, seeded), flush=True)
        from gateway.serve import serve

        return serve(settings)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


async def seed_demo(settings: Settings, bot_url: str) -> Seeded:
    """The demo workspace, through the store when it is available, else Redis only."""
    from meter.redis_client import connect

    client = connect(settings.redis_url)
    try:
        try:
            return await _seed_store(settings, client, bot_url)
        except Exception:
            log.warning("store seeding failed; seeding Redis only", exc_info=True)
        return await _seed_redis(settings, client, bot_url)
    finally:
        await client.aclose()


async def _seed_store(settings: Settings, client: Any, bot_url: str) -> Seeded:
    from meter import accounts, apps, credits
    from meter.store import open_store

    store = open_store(settings.store_url)
    try:
        await store.migrate()
        d = accounts.Deps(store, client, settings, load_catalog(settings.catalog_path))
        user, token = await accounts.create_user(d, "operator", "owner@demo.example", "Demo")
        ws = await accounts.create_workspace(d, user.id, "Demo workspace")
        ample = await apps.create_app(d, user.id, ws, "Ample bot", "automation", bot_url)
        tight = await apps.create_app(d, user.id, ws, "Tight bot", "automation", bot_url)
        actor = f"user:{user.id}"
        await apps.update_app(d, actor, tight, {"use_free_credits": False})
        await credits.add_funds(d, actor, ws, "0.60", app_id=tight.id, reference="demo-tight")
        return Seeded(ws.id, ample.id, tight.id, token)
    finally:
        await store.close()


async def _seed_redis(settings: Settings, client: Any, bot_url: str) -> Seeded:
    from meter import projection

    ws, ample, tight = "demo", "demo_ample", "demo_tight"
    await projection.put_workspace(
        client, ws, plan="standard", catalog=load_catalog(settings.catalog_path)
    )
    await projection.put_app(client, ample, product="automation", upstream_url=bot_url)
    await projection.put_app(
        client, tight, product="automation", upstream_url=bot_url, use_free_credits=False
    )
    low = settings.low_balance_threshold
    expires = int((time.time() + settings.free_credit_validity_s) * 1000)
    await projection.grant(
        client, ws, reference="free:demo", kind="free", amount=settings.free_credits,
        free_expires_ms=expires, low_threshold=low,
    )  # fmt: skip
    await projection.grant(
        client, ws, reference="demo-tight", kind="funds", amount=600_000, app_id=tight,
        low_threshold=low,
    )  # fmt: skip
    return Seeded(ws, ample, tight, None)


def instructions(settings: Settings, s: Seeded) -> str:
    t = f"http://{settings.host}:{settings.traffic_port}"
    a = f"http://{settings.host}:{settings.admin_port}"
    lines = [
        "",
        f"creditgate demo: workspace {s.ws}, apps {s.ample} (ample free credits) and "
        f"{s.tight} ($0.60: three sessions)",
        "",
        "# a message (one $0.20 session per channel user per 15 minutes):",
        f"curl -s {t}/hooks/web/{s.ample}/chat -H 'X-Channel-User-Id: alice' -d 'hello'",
        "# a Slack-shaped event (user and idempotency key come from the body):",
        f"curl -s {t}/hooks/slack/{s.ample}/events -H 'Content-Type: application/json' "
        """-d '{"type":"event_callback","event_id":"Ev1","""
        """"event":{"type":"message","user":"U1"}}'""",
        "# run the tight app out of credits: three users are served, then 402:",
        f"for u in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}}\\n' "
        f'{t}/hooks/web/{s.tight} -H "X-Channel-User-Id: user$u" -d hi; done',
        f"curl -s {t}/hooks/web/{s.tight} -H 'X-Channel-User-Id: user9' -d hi   # the problem+json",
        "# metrics and readiness:",
        f"curl -s {a}/metrics | grep creditgate_requests_total",
        f"curl -s {a}/readyz",
    ]
    if s.owner_token:
        lines += [
            "# plan and usage as the workspace owner:",
            f"curl -s {a}/v1/workspaces/{s.ws}/plan-usage "
            f"-H 'Authorization: Bearer {s.owner_token}'",
        ]
    lines += ["", "Ctrl-C stops the gateway, the bot and Redis.", ""]
    return "\n".join(lines)
