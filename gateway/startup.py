"""Start-up checks of the CLI commands: the store's schema and Redis, as one-line reasons.

Every problem an operator can fix is a :class:`StartupError` whose message names the
setting and its value (secrets masked), e.g. ``CREDITGATE_STORE_URL: ... run `creditgate
migrate```. The embedded SQLite store migrates itself where ``serve``/``demo`` ask for
it; any other store behind the code's schema version is refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from config import Settings, SettingsError
from config.urls import mask_url, sqlite_path

if TYPE_CHECKING:
    from meter.redis_layer.client import RedisClient
    from meter.store import Store

# Redis and the store are imported by the functions that use them: `creditgate --help`,
# a settings error and the store-only commands do not load Redis (start-up CPU).

log = logging.getLogger(__name__)
STORE_TIMEOUT_S = 15.0
REDIS_TIMEOUT_S = 5.0


class StartupError(Exception):
    """A reason not to start, in one line that names the setting."""


def store_problem(settings: Settings, reason: object) -> StartupError:
    text = " ".join(str(reason).split()) or type(reason).__name__
    return StartupError(
        f"CREDITGATE_STORE_URL: cannot use the store at {mask_url(settings.store_url)}: {text}"
    )


def redis_problem(settings: Settings, reason: BaseException) -> StartupError:
    text = " ".join(str(reason).split()) or type(reason).__name__
    return StartupError(
        f"CREDITGATE_REDIS_URL: Redis at {mask_url(settings.redis_url)} does not answer: {text}"
    )


def migrates_itself(settings: Settings) -> bool:
    """The embedded SQLite store is brought to the code's schema by ``serve``/``demo``."""
    return settings.store_url.startswith("sqlite://")


async def open_ready_store(
    settings: Settings, *, migrate: bool = False, applied: list[int] | None = None
) -> Store:
    """The store, open and at the code's schema version (migrated first if ``migrate``;
    the versions applied then are added to ``applied``).

    A SQLite file that does not exist is only created when migrating, so a read-only
    command on a fresh checkout leaves nothing behind.
    """
    from meter.store import StoreError, open_store
    from meter.store.schema import latest_version

    if settings.store_url.startswith("sqlite://") and not migrate:
        path = sqlite_path(settings.store_url)
        if not os.path.exists(path):  # noqa: ASYNC240 - one stat at start-up
            raise StartupError(
                f"CREDITGATE_STORE_URL: no database at {path}: run `creditgate migrate` first"
            )
    applied = [] if applied is None else applied
    try:
        store = open_store(settings.store_url)
    except ValueError as exc:
        raise store_problem(settings, exc) from None
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            await store.connect()
            if migrate:
                applied.extend(await store.migrate())
            version = await store.schema_version()
    except (StoreError, OSError, TimeoutError) as exc:
        await store.close()
        reason = f"no answer in {STORE_TIMEOUT_S:.0f}s" if isinstance(exc, TimeoutError) else exc
        raise store_problem(settings, reason) from None
    except BaseException:
        await store.close()
        raise
    if version < latest_version():
        await store.close()
        raise StartupError(
            f"CREDITGATE_STORE_URL: the store at {mask_url(settings.store_url)} is at schema "
            f"version {version}, this creditgate needs {latest_version()}: "
            "run `creditgate migrate`"
        )
    return store


async def prepare_store(settings: Settings) -> int:
    """What ``serve`` does before any worker starts; returns the schema version."""
    store = await open_ready_store(settings, migrate=migrates_itself(settings))
    try:
        return await store.schema_version()
    finally:
        await store.close()


async def redis_reason(client: RedisClient) -> BaseException | None:
    """``None`` when Redis answers a PING, else what went wrong."""
    from redis.exceptions import RedisClusterException, RedisError

    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            await client.ping()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        return exc
    return None


async def ready_redis(settings: Settings) -> RedisClient:
    """A client whose server answers and cannot evict keys, or :class:`StartupError`
    (:class:`SettingsError` for a Redis that may evict)."""
    from meter.redis_layer.client import connect

    client = connect(settings.redis_url, timeout=REDIS_TIMEOUT_S)
    try:
        reason = await redis_reason(client)
        if reason is None:
            await refuse_eviction(settings, client)
    except BaseException:
        await client.aclose()
        raise
    if reason is not None:
        await client.aclose()
        raise redis_problem(settings, reason)
    return client


async def refuse_eviction(settings: Settings, client: RedisClient) -> None:
    """:class:`SettingsError` (exit 2) naming the policy and the fix when Redis may evict
    keys (:mod:`meter.redis_layer.eviction`)."""
    from redis.exceptions import RedisClusterException, RedisError

    from meter.redis_layer import eviction

    try:
        async with asyncio.timeout(REDIS_TIMEOUT_S):
            problem = await eviction.eviction_problem(client)
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise redis_problem(settings, exc) from None
    if problem is not None:
        raise SettingsError(
            f"CREDITGATE_REDIS_URL: {mask_url(settings.redis_url)}: {eviction.advice(problem)}"
        )


async def warn_if_redis_down(settings: Settings) -> None:
    """``serve`` starts without Redis (fail-open serves meanwhile; ``/readyz`` reports
    it); it says once, with the URL, what it keeps trying."""
    from meter.redis_layer.client import connect

    client = connect(settings.redis_url, timeout=REDIS_TIMEOUT_S)
    try:
        reason = await redis_reason(client)
        if reason is None:
            await refuse_eviction(settings, client)
    finally:
        await client.aclose()
    if reason is not None:
        log.warning(
            "%s; serving anyway and retrying (/readyz reports not ready until it answers)",
            redis_problem(settings, reason),
        )
        return
    await rename_legacy_fields(settings)


async def rename_legacy_fields(settings: Settings) -> None:
    """Balance fields of an older version's Redis renamed before any worker admits
    (:func:`meter.accounts.projection.rename_legacy_fields`); best effort, logged."""
    from redis.exceptions import RedisClusterException, RedisError

    from meter.accounts import projection
    from meter.redis_layer.client import connect

    client = connect(settings.redis_url, timeout=REDIS_TIMEOUT_S)
    try:
        renamed = await projection.rename_legacy_fields(client)
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        log.warning("could not rename older balance fields in Redis: %r", exc)
        return
    finally:
        await client.aclose()
    if renamed:
        log.warning("renamed %d balance field(s) of an older version in Redis", renamed)
