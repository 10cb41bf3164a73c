"""Channel authentication as the tests set it up and sign for it: settings with a secret
key, channel secrets projected into Redis the way the admin API does (encrypted), HS256
chat tokens and Slack signatures made with them, and the state metering would change."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import jwt

from config import Settings
from meter.accounts import channel_secrets
from meter.accounts.projection import read_balances
from meter.redis_layer.client import RedisClient
from meter.store import AppChannel
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


async def metered_state(rclient: RedisClient, ws: str) -> tuple[Any, list[bytes]]:
    """Balances and every Redis key of workspace ``ws``: what any metering changes."""
    names = sorted(await rclient.keys(f"cg:{{{ws}}}*"))
    return await read_balances(rclient, ws), names
