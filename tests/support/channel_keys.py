"""Channel authentication as the tests set it up and sign for it: settings with a secret
key, channel secrets projected into Redis the way the admin API does (encrypted), HS256
chat tokens and Slack signatures made with them, and a world to try them in."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from config import Settings
from meter.accounts import channel_secrets
from meter.accounts.projection import Balances, read_balances
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import AppChannel
from tests.support.bot import Bot, Running
from tests.support.settings import make_settings

SECRET = "s3cr3t-" + "x" * 30  # the channel secret the tests install
SECRET_KEY = "test-secret-key-" + "z" * 20  # settings.secret_key: encrypts channel secrets


def auth_settings(redis_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """:func:`make_settings` with a secret key, and channel secrets read fresh from Redis
    (no cache a test would wait out); then ``overrides``."""
    return make_settings(
        redis_url,
        tmp_path,
        secret_key=SECRET_KEY,
        channel_secret_max_age_s=0.001,
        **overrides,
    )


def meta_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """Meta's (WhatsApp's) signature header for ``body``."""
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": sig}


async def set_secret(
    rclient: RedisClient,
    settings: Settings,
    app_id: str,
    channel: str,
    secret: str = SECRET,
    notify: str | None = None,
) -> None:
    """Project a channel secret (and a notify secret) the way the admin API does."""
    f = channel_secrets.cipher(settings)
    assert f is not None
    ch = AppChannel(
        app_id=app_id,
        channel=channel,
        scheme=channel_secrets.scheme_of(channel),
        secret_enc=f.encrypt(secret.encode()).decode(),
        notify_secret_enc=f.encrypt(notify.encode()).decode() if notify else None,
        updated_at=0,
    )
    await channel_secrets.project(rclient, app_id, channel, ch)


def hs256(sub: str | None = "alice", key: str = SECRET, exp_in: float = 300, **claims: Any) -> str:
    """A chat token for user ``sub`` signed with ``key``, expiring in ``exp_in`` s."""
    payload: dict[str, Any] = {"exp": int(time.time() + exp_in), **claims}
    if sub is not None:
        payload["sub"] = sub
    return jwt.encode(payload, key, algorithm="HS256")


def slack_headers(body: bytes, secret: str = SECRET, ts: int | str | None = None) -> dict[str, str]:
    """Slack's signature headers for ``body`` at timestamp ``ts`` (default: now)."""
    stamp = str(int(time.time()) if ts is None else ts)
    base = b"v0:" + stamp.encode() + b":" + body
    sig = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": sig}


@dataclass
class AuthWorld:
    """A gateway with channel authentication in front of workspace ``ws``, with the
    test's bot, Redis client and HTTP client."""

    ws: str
    gw: Running
    bot: Bot
    rclient: RedisClient
    http: aiohttp.ClientSession

    async def state(self) -> tuple[Balances, list[bytes | str]]:
        """Balances and every Redis key of the workspace: what any metering changes.

        Read once the gateway's forward confirmations have landed: a charged message's
        reservation is removed after its answer (meter/admission/reservations.py), so a
        comparison would otherwise see when that happened, not what was metered."""
        rsv = keys.reservations_key(self.ws)
        for _ in range(300):  # progress observed, bounded; never an assertion on time
            if not await self.rclient.exists(rsv):
                break
            await asyncio.sleep(0.05)
        names = sorted(await self.rclient.keys(f"cg:{{{self.ws}}}*"))
        return await read_balances(self.rclient, self.ws), names
