"""Channel verification secrets: set, remove, encrypt, and project to Redis (docs/design.md §3).

An app enables a channel with a secret; the scheme follows from the channel's name:

* ``slack`` - ``slack_v0``: the Slack signing secret (HMAC-SHA256 of the raw body);
* ``whatsapp`` - ``meta_sha256``: the Meta app secret (``X-Hub-Signature-256``);
* ``msteams`` - ``botframework_jwt``: the bot's Microsoft App ID (the JWT audience);
* any other channel - ``jwt_hs256``: the key of the HS256 JWTs the SDK presents.

HMAC and HS256 need the plain secret back, so secrets are stored encrypted (Fernet, a
key derived with HKDF from ``settings.secret_key``, else from ``operator_token`` for the
demo), in the store (the source of truth) and in the Redis projection (field
``ch:<channel>`` of the app hash) that traffic workers read and decrypt. A secret is
never returned by the API nor written to the audit log. Rotation: with
``secret_key_previous`` set to the old material, secrets under it are still read, and
:func:`check_key` (``serve``'s start) re-encrypts the stored ones with the new key; the
projection check then writes them to Redis.

``/notify`` is authenticated with an HS256 JWT signed with the channel's
``notify_secret``, or its secret when none is set; ``msteams`` has no secret of its own
(an App ID is public), so its ``/notify`` needs a ``notify_secret``.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import replace

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from config import Settings, SettingsError
from meter.accounts import rebuild
from meter.accounts.deps import Deps, announce, audit
from meter.accounts.projection import FIELD_PREFIX as FIELD_PREFIX
from meter.accounts.projection import field_of as field_of
from meter.accounts.projection import projected as projected
from meter.errors import Conflict, InvalidInput
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import App, AppChannel, CapReached, Store

SCHEMES = {"slack": "slack_v0", "whatsapp": "meta_sha256", "msteams": "botframework_jwt"}
HS256 = "jwt_hs256"
MIN_SECRET = 32  # HS256 keys below 32 bytes are weak (RFC 7518 §3.2); Slack/Meta use 32
MAX_SECRET = 512
_INFO = b"creditgate channel secrets v1"
# A projection written again at most this often while what it projects keeps changing
# (the projection check repairs what is left).
PASSES = 8

log = logging.getLogger(__name__)


def scheme_of(channel: str) -> str:
    return SCHEMES.get(channel, HS256)


def _fernet(material: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        material.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def cipher(settings: Settings) -> MultiFernet | None:
    """The cipher of channel secrets (encrypts with the current key, reads with it or
    the previous one), or ``None`` without any key material."""
    material = settings.secret_key or settings.operator_token
    if not material:
        return None
    previous = settings.secret_key_previous
    return MultiFernet([_fernet(material), *([_fernet(previous)] if previous else [])])


def _check_secret(field: str, value: str) -> str:
    if not MIN_SECRET <= len(value) <= MAX_SECRET:
        raise InvalidInput(field, f"must be {MIN_SECRET}-{MAX_SECRET} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise InvalidInput(field, "must be printable characters without spaces")
    return value


def _require_cipher(d: Deps) -> MultiFernet:
    f = cipher(d.settings)
    if f is None:
        raise Conflict(
            "the gateway has no secret_key to encrypt channel secrets with",
            code="secret_key_missing",
        )
    return f


async def project(client: RedisClient, app_id: str, channel: str, ch: AppChannel | None) -> None:
    """Write (or, for ``None``, remove) a channel's secret in the app's Redis hash."""
    ws = keys.workspace_of(app_id)
    if ws is None:
        raise InvalidInput("app_id", "malformed app id")
    ak = keys.app_key(ws, app_id)
    if ch is None:
        await client.hdel(ak, field_of(channel))
    else:
        await client.hset(ak, field_of(channel), projected(ch))


async def project_latest(d: Deps, app_id: str, channel: str, ch: AppChannel | None) -> None:
    """Write ``ch`` (the store's row as this change left it; ``None``: removed) to Redis,
    then again as the store holds it now, until the two agree: changes of one channel
    (a former owner's, landed before a handover, and the new owner's) reach Redis in any
    order, and whoever writes it last reads the store after that write."""
    for _ in range(PASSES):
        await project(d.redis, app_id, channel, ch)
        latest = await d.store.get_app_channel(app_id, channel)
        if latest == ch:
            return
        ch = latest
    log.warning("channel %s of app %s kept changing while projected", channel, app_id)


async def _workspace_first(d: Deps, app: App) -> None:
    """Rebuild the app's workspace if Redis lost it, before a channel change is
    projected: a rebuild that read the channels before the change and landed after its
    projection would rewrite the app's hash whole (``rebuild.lua``), undoing it. Once
    Redis holds the workspace, no rebuild writes anything."""
    if not await d.redis.hexists(keys.ws_key(app.workspace_id), "type"):
        ws, now = app.workspace_id, d.clock()
        await rebuild.rebuild_workspace(d.store, d.redis, d.settings, d.catalog, ws, now_s=now)


async def project_app_channels(store: Store, client: RedisClient, app_id: str) -> None:
    """Rebuild every channel secret of an app in Redis from the store, then again while
    the store moved on meanwhile (as :func:`project_latest`): a secret set or removed
    during the rebuild is never undone in Redis by the rebuild's older read of it."""
    chans = await store.list_app_channels(app_id)
    gone: set[str] = set()
    for _ in range(PASSES):
        for name in gone:
            await project(client, app_id, name, None)
        for ch in chans:
            await project(client, app_id, ch.channel, ch)
        latest = await store.list_app_channels(app_id)
        if latest == chans:
            return
        gone = {ch.channel for ch in chans} - {ch.channel for ch in latest}
        chans = latest
    log.warning("the channels of app %s kept changing while projected", app_id)


def _check_channel(channel: str) -> str:
    if not keys.CHANNEL_RE.fullmatch(channel):
        raise InvalidInput("channel", "must be a channel name: lowercase letters, digits, _ or -")
    return channel


async def set_channel(
    d: Deps,
    actor: str,
    app: App,
    channel: str,
    secret: str,
    notify_secret: str | None = None,
    *,
    owner: str | None,
) -> AppChannel:
    """Enable ``channel`` of ``app`` with its verification secret (replacing any). Any
    well-formed channel name is a channel (header-only rules), so an app holds at most
    ``max_channels_per_app`` of them: one more is 409 ``too_many_channels``. ``owner``:
    the app owner the authorization relied on, who must still own it (``apps.update_app``)."""
    _check_channel(channel)
    _check_secret("secret", secret)
    if notify_secret is not None:
        _check_secret("notify_secret", notify_secret)
    f = _require_cipher(d)
    ch = AppChannel(
        app_id=app.id,
        channel=channel,
        scheme=scheme_of(channel),
        secret_enc=f.encrypt(secret.encode()).decode(),
        notify_secret_enc=f.encrypt(notify_secret.encode()).decode() if notify_secret else None,
        updated_at=d.now_ms(),
    )
    cap = d.settings.max_channels_per_app
    try:  # the row replaced, read in the write's transaction: the audit's "before"
        before = await d.store.put_app_channel(ch, cap, expect_owner=owner)
    except CapReached:
        raise Conflict(
            f"app {app.id} already has {cap} channels: the limit is {cap} per app (setting "
            "max_channels_per_app); remove one, or ask the operator to raise it",
            code="too_many_channels",
        ) from None
    await _workspace_first(d, app)
    await project_latest(d, app.id, channel, ch)
    await announce(d, app.id)
    # Never the secret itself: only that it was set, and when.
    after = {"channel": channel, "scheme": ch.scheme, "notify_secret": bool(notify_secret)}
    prior = {"channel": channel, "scheme": before.scheme} if before else None
    await audit(d, actor, "channel.set", f"app:{app.id}", prior, after)
    return ch


async def remove_channel(
    d: Deps, actor: str, app: App, channel: str, *, owner: str | None
) -> AppChannel | None:
    """Remove ``channel``'s secret (it becomes unauthenticated); the removed row, if any.
    ``owner``: as for :func:`set_channel`."""
    _check_channel(channel)
    # The row this removal deleted (``None``: none by then), not one read before it: a
    # removal that raced another removes and audits nothing; one that raced a set
    # removes and audits that secret.
    before = await d.store.delete_app_channel(app.id, channel, expect_owner=owner)
    await _workspace_first(d, app)
    await project_latest(d, app.id, channel, None)
    await announce(d, app.id)
    if before is not None:
        prior = {"channel": channel, "scheme": before.scheme}
        await audit(d, actor, "channel.remove", f"app:{app.id}", prior, None)
    return before


def decrypt(f: MultiFernet, token: str) -> str:
    """A stored secret in the clear; :class:`InvalidToken` under another key."""
    return f.decrypt(token.encode()).decode()


async def check_key(store: Store, settings: Settings) -> int:
    """At start-up: the stored channel secrets can be decrypted; returns how many exist.

    Raises :class:`SettingsError` naming the setting when secrets exist but no key is
    configured, or when the key does not decrypt them (it changed).
    """
    rows = await store.list_app_channels()
    if not rows:
        return 0
    f = cipher(settings)
    if f is None:
        raise SettingsError(
            f"CREDITGATE_SECRET_KEY: {len(rows)} channel secret(s) are stored but neither "
            "secret_key nor operator_token is set to decrypt them"
        )
    current = _fernet(settings.secret_key or settings.operator_token or "")
    rotated = 0
    try:
        for ch in rows:
            tokens = [ch.secret_enc, *([ch.notify_secret_enc] if ch.notify_secret_enc else [])]
            for token in tokens:
                decrypt(f, token)
            if not all(_under(current, t) for t in tokens):
                rotated += await store.reencrypt_app_channel(ch, _rotated(f, ch))
    except InvalidToken:
        raise SettingsError(
            "CREDITGATE_SECRET_KEY: the key does not decrypt the stored channel secrets "
            "(it changed since they were set); restore it, set CREDITGATE_SECRET_KEY_PREVIOUS "
            "to the old one, or set the secrets again"
        ) from None
    if rotated:
        log.info("channel secrets: %d re-encrypted with the current secret_key", rotated)
    return len(rows)


def _under(f: Fernet, token: str) -> bool:
    try:
        f.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def _rotated(f: MultiFernet, ch: AppChannel) -> AppChannel:
    """``ch`` with its secrets re-encrypted under the current key (same time stamp)."""
    notify = ch.notify_secret_enc
    return replace(
        ch,
        secret_enc=f.rotate(ch.secret_enc.encode()).decode(),
        notify_secret_enc=f.rotate(notify.encode()).decode() if notify else None,
    )
