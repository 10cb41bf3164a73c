"""``creditgate demo``: everything on one machine, on embedded defaults.

Starts a throwaway ``redis-server`` and the sample echo bot on free loopback ports
(files in ``./.demo/``), a fresh SQLite store, seeds a demo workspace with two apps -
``ample`` (the workspace's $500 free credits) and ``tight`` (no free credits, $0.60 of
its own: three sessions) - prints curl lines to try, then serves with one worker on
127.0.0.1 until Ctrl-C.

The demo is self-contained: its own Redis, store, host and tokens beat ``CREDITGATE_*``
variables (ports and other settings may still be set). ``.demo/lock`` is taken before
anything is touched, so a second demo in the same directory refuses to start and leaves
the running one's files alone. Every request is logged (the access log, text format).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
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
from gateway.startup import StartupError

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


def take_lock(base: Path) -> int:
    """Hold ``base/lock`` for this process's life (the kernel drops it at exit, crash
    included); :class:`StartupError` while another demo holds it."""
    fd = os.open(base / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another creditgate demo (pid {holder}) is running in {base.parent}: stop it "
            "with Ctrl-C, or run this one from another directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_demo(config: str | None, overrides: dict[str, Any]) -> int:
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print(f"creditgate: {INSTALL_HINT}", file=sys.stderr)
        return 2
    base = DEMO_DIR.resolve()
    base.mkdir(exist_ok=True)
    lock = take_lock(base)  # before anything in .demo is touched
    try:
        return _run_locked(base, redis_bin, config, overrides)
    finally:
        os.close(lock)


def _run_locked(base: Path, redis_bin: str, config: str | None, overrides: dict[str, Any]) -> int:
    for stale in base.glob("creditgate.db*"):
        stale.unlink()  # Redis starts empty, so the store does too
    # Settings (and the ports) first: a mistake stops the demo before anything starts.
    settings = load_settings(
        config,
        **{
            "redis_url": f"redis://{HOST}:6379/0",  # replaced by the demo's own below
            "store_url": f"sqlite:///{base}/creditgate.db",
            "state_dir": f"{base}/state",
            "host": HOST,
            "workers": 1,
            "operator_token": secrets.token_urlsafe(24),
            "topup_min": "0.20",
            "log_format": "text",
            "access_log": True,
            # Usage reaches the store (and the export) within seconds.
            "flush_bucket_s": 10,
            "flush_grace_s": 2,
            "flush_interval_s": 2,
            # The sample bot listens on loopback, which the egress policy refuses
            # unless allowed; only its address is (the gateway's own ports stay shut).
            "egress_allow": [HOST],
            **overrides,
        },
    )
    from gateway.serve import check_ports, serve

    check_ports(settings, hint="; --traffic-port/--admin-port choose others")
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
        settings = settings.model_copy(update={"redis_url": f"redis://{HOST}:{redis_port}/0"})
        seeded = asyncio.run(seed_demo(settings, f"http://{HOST}:{bot_port}"))
        return serve(settings, banner=lambda s: instructions(s, seeded))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


async def seed_demo(settings: Settings, bot_url: str) -> Seeded:
    """The demo workspace, through the store when it is available, else Redis only."""
    from meter.redis_layer.client import connect

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
    from meter.accounts import apps, credits, workspaces
    from meter.accounts.deps import Deps
    from meter.store import open_store

    store = open_store(settings.store_url)
    try:
        await store.migrate()
        d = Deps(store, client, settings, load_catalog(settings.catalog_path))
        user, token = await workspaces.create_user(d, "operator", "owner@demo.example", "Demo")
        ws = await workspaces.create_workspace(d, user.id, "Demo workspace")
        ample = await apps.create_app(d, user.id, ws, "Ample bot", "automation", bot_url)
        tight = await apps.create_app(d, user.id, ws, "Tight bot", "automation", bot_url)
        actor = f"user:{user.id}"
        await apps.update_app(d, actor, tight, {"use_free_credits": False}, owner=None)
        await credits.add_funds(d, actor, ws, "0.60", app_id=tight.id, reference="demo-tight")
        return Seeded(ws.id, ample.id, tight.id, token)
    finally:
        await store.close()


async def _seed_redis(settings: Settings, client: Any, bot_url: str) -> Seeded:
    from meter.accounts.seeding import seed

    ws, ample, tight = "demo", "demo_ample", "demo_tight"
    apps: dict[str, dict[str, Any]] = {
        ample: {"product": "automation", "upstream_url": bot_url},
        tight: {
            "product": "automation",
            "upstream_url": bot_url,
            "use_free_credits": False,
            "funds": 600_000,
        },
    }
    await seed(client, settings, ws, apps, free=settings.free_credits)
    return Seeded(ws, ample, tight, None)


def _creditgate() -> str:
    """How to call this creditgate again (``.venv/bin`` is rarely on PATH)."""
    beside = Path(sys.executable).parent / "creditgate"
    if shutil.which("creditgate") == str(beside) or not beside.exists():
        return "creditgate"
    return os.path.relpath(beside) if not os.path.relpath(beside).startswith("..") else str(beside)


def instructions(settings: Settings, s: Seeded) -> str:
    """What the demo prints once it serves: tokens, the dashboard, curl lines to try."""
    t = f"http://{settings.host}:{settings.traffic_port}"
    a = f"http://{settings.host}:{settings.admin_port}"
    # The console under another host name than the traffic's: cookies are not scoped by
    # port, and a bot's page on the traffic host would share the console's (README).
    ui = a.replace("127.0.0.1", "localhost", 1) if settings.host == "127.0.0.1" else a
    op = settings.operator_token or ""
    owner = s.owner_token or ""
    store = settings.store_url
    lines = [
        "",
        f"creditgate demo: workspace {s.ws}, apps {s.ample} (ample free credits) and "
        f"{s.tight} ($0.60: three sessions)",
        f"  operator token: {op}",
    ]
    if owner:
        lines.append(f"  owner token:    {owner}")
    lines += [
        f"  dashboard:      {ui}/ui   (sign in with the owner token)",
        "",
        "# a message (one $0.20 session per channel user per 15 minutes):",
        f"curl -s {t}/hooks/web/{s.ample}/chat -H 'X-Channel-User-Id: alice' -d 'hello'",
        "# a Slack-shaped event (user and idempotency key come from the body):",
        f"curl -s {t}/hooks/slack/{s.ample}/events -H 'Content-Type: application/json' "
        """-d '{"type":"event_callback","event_id":"Ev1","""
        """"event":{"type":"message","user":"U1"}}'""",
        "# a refusal: the tight app serves three users, then answers 402 credits_exhausted:",
        f"for u in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' "
        f'{t}/hooks/web/{s.tight} -H "X-Channel-User-Id: user$u" -d hi; done',
        f"curl -s {t}/hooks/web/{s.tight} -H 'X-Channel-User-Id: user9' -d hi   # the problem+json",
    ]
    if s.owner_token:
        lines += [
            "# a top-up: the operator credits $1.00 to the tight app (the reference credits once):",
            f"curl -s {a}/v1/workspaces/{s.ws}/funds -H 'Authorization: Bearer {op}' "
            f"""-H 'Content-Type: application/json' -d '{{"amount":"1.00","app_id":"{s.tight}","""
            """"reference":"demo-topup-1"}'""",
            "# plan, balances and usage as the workspace owner:",
            f"curl -s {a}/v1/workspaces/{s.ws}/plan-usage -H 'Authorization: Bearer {owner}'",
            f"curl -s '{a}/v1/workspaces/{s.ws}/usage?granularity=hour' "
            f"-H 'Authorization: Bearer {owner}'",
        ]
    lines += [
        "# the billing export (usage reaches the store a few seconds after the messages):",
        f"{_creditgate()} export --store-url {store} --granularity hour",
        "# metrics and readiness:",
        f"curl -s {a}/metrics | grep creditgate_requests_total",
        f"curl -s {a}/readyz",
        "",
        "Ctrl-C stops the gateway, the bot and Redis. Requests are logged below.",
        "",
    ]
    return "\n".join(lines)
