"""Signing keys of an OpenID provider (the Bot Framework), fetched with aiohttp and
cached per worker process (:mod:`gateway.channel_auth`, scheme ``botframework_jwt``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, NamedTuple

import aiohttp
import jwt
import orjson

from gateway.channel_credentials import auth_unavailable

log = logging.getLogger(__name__)
MAX_DOCUMENT = 1 << 20  # bytes of the OpenID metadata or key set


class SigningKey(NamedTuple):
    """A published key, its issuer, and the channels it is endorsed for (Microsoft lists
    them per key: a key signs activities only of a channel it endorses)."""

    key: jwt.PyJWK
    issuer: str
    endorsements: frozenset[str]  # empty: the key lists none


class OpenIdKeys:
    """Signing keys of an OpenID provider (the Bot Framework), cached per process."""

    def __init__(self, url: str, *, max_age: float, min_refresh: float, timeout: float) -> None:
        self._url = url
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._keys: dict[str, tuple[jwt.PyJWK, frozenset[str]]] = {}
        self._issuer = ""
        self._fetched = -math.inf  # monotonic time of the last successful fetch
        self._tried = -math.inf  # ... of the last attempt
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def get(self, kid: str) -> SigningKey | None:
        """The key ``kid``, its issuer and endorsements; ``None`` for a key the provider
        does not list (or the last key set fetched, while the provider fails)."""
        found = self._fresh(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._fresh(kid)  # fetched meanwhile by another request
            if found is not None:
                return found
            # Unknown or stale: refetch, but at most every min_refresh (a provider outage
            # must not make every request wait for a fetch, nor forged kids cause fetches).
            now = time.monotonic()
            if now - self._tried >= self._min_refresh:
                self._tried = now
                try:
                    await self._fetch()
                except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
                    log.warning("msteams: cannot fetch signing keys from %s: %r", self._url, exc)
            key = self._keys.get(kid)  # possibly past max_age: better than refusing all
            if key is not None:
                return SigningKey(key[0], self._issuer, key[1])
            # 503 (the gateway's own error, which pages) only while no key set was ever
            # fetched; once one was, a kid it lacks is refused (401) even if the refetch
            # failed, or anyone could turn a provider outage into the gateway's errors.
            if self._fetched == -math.inf:
                raise auth_unavailable()
            return None

    def _fresh(self, kid: str) -> SigningKey | None:
        key = self._keys.get(kid)
        if key is None or time.monotonic() - self._fetched > self._max_age:
            return None
        return SigningKey(key[0], self._issuer, key[1])

    async def _fetch(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        self.fetches += 1
        meta = await self._json(self._url)
        issuer, jwks_uri = meta.get("issuer"), meta.get("jwks_uri")
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str):
            raise ValueError("OpenID metadata without issuer or jwks_uri")
        doc = await self._json(jwks_uri)
        raws = doc.get("keys")
        if not isinstance(raws, list):
            raise ValueError("JWKS without a keys list")
        keys: dict[str, tuple[jwt.PyJWK, frozenset[str]]] = {}
        for raw in raws:
            try:
                k = jwt.PyJWK(raw) if isinstance(raw, dict) else None
            except (jwt.PyJWTError, TypeError, ValueError, KeyError):
                continue  # as PyJWKSet does: a key it cannot use is skipped (any malformed one)
            if k is None or not isinstance(k.key_id, str) or not k.key_id:
                continue
            if k.public_key_use in (None, "sig") and k.algorithm_name == "RS256":
                keys[k.key_id] = (k, _endorsements(raw.get("endorsements")))
        if not keys:
            raise ValueError("JWKS without a usable RS256 signing key")
        self._keys = keys
        self._issuer = issuer
        self._fetched = time.monotonic()

    async def _json(self, url: str) -> dict[str, Any]:
        """A JSON object of at most :data:`MAX_DOCUMENT` bytes (Microsoft's are ~10 KB):
        a provider, or whoever answers for it, cannot fill a worker's memory."""
        assert self._session is not None
        async with self._session.get(url, allow_redirects=False) as resp:
            resp.raise_for_status()
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                raw += chunk
                if len(raw) > MAX_DOCUMENT:
                    raise ValueError(f"{url} answered more than {MAX_DOCUMENT} bytes")
            doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return doc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _endorsements(value: object) -> frozenset[str]:
    """A key's ``endorsements``: the channel ids listed (none unless a list)."""
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))
