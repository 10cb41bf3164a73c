"""Reversing a charged admission whose message was not served (``refund.lua``)."""

from __future__ import annotations

from collections.abc import Callable

from config import Settings
from meter.admission.decision import Decision
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.redis_layer.clock import RedisClock
from meter.redis_layer.scripts import register, run


class Refunds:
    """``refund`` and ``void`` of :class:`~meter.admission.admitter.Admitter`."""

    def __init__(self, client: RedisClient, settings: Settings, clock: Callable[[], float]):
        self._client = client
        self._clock = clock
        self._redis_clock = clock if isinstance(clock, RedisClock) else None
        self._timeout = settings.redis_timeout_s
        self._refund = register(client, "refund")
        self._bucket_s = settings.flush_bucket_s
        self._block_ms = int(settings.session_block_s * 1000)
        self._idle_ms = int(settings.session_idle_s * 1000)
        self._usage_fields = settings.max_usage_fields  # refund.lua ARGV[13]

    async def refund(self, app_id: str, decision: Decision) -> bool:
        """One delivery of a message was not served: reverse its charge once no delivery of
        it was or may still be served (``refund.lua``). Idempotent.

        A duplicate (a redelivery) is reported too: charged nothing itself, it keeps the
        original's charge standing until it fails as well; so is a message admitted inside
        a paid billing session (``bsid``, charged nothing): it no longer counts as served
        in the session, and when that leaves the session's opener alone, and the opener
        failed too, the opener's charge is given back. Returns whether something was
        refunded (False for uncharged messages, a delivery other than the last to fail, a
        second call, a token whose record was already replaced by a retry, or a session's
        opener whose session entry is no longer found: reported late, it stands).
        """
        if not decision.duplicate and decision.units == 0 and decision.code == 0:
            if not decision.bsid:
                return False
            return await self.void(
                app_id,
                decision.rid,
                decision.token,
                session=(decision.bsid, decision.channel, decision.user),
                at=decision.at,
            )
        return await self.void(app_id, decision.rid, decision.token, at=decision.at)

    async def void(
        self,
        app_id: str,
        rid: str,
        token: str,
        session: tuple[str, str, str] = ("", "", ""),
        at: int = 0,
    ) -> bool:
        """Attempt ``token`` was not served (e.g. an ambiguous timeout answered 503): count
        its failure if it is a delivery of record ``rid``
        (:func:`meter.redis_layer.keys.record_id`), and refund the charge once every
        delivery failed. An empty ``token`` is the original's failure, counted only while
        its charge is still reserved (the sweeper). ``session``: (billing session id, channel,
        channel user) of an attempt admitted in a paid session without a charge; ``at``
        (ms, 0: unknown) its admission call's now: a message that no longer counts in its
        session leaves the aggregates' messages of that bucket (``refund_counts.lua``)."""
        ws = keys.workspace_of(app_id)
        if ws is None:
            return False
        rc = self._redis_clock
        if rc is not None and not rc.synced:  # never stamped with the local clock
            await rc.ensure_synced(self._client, self._timeout)
        now = self._clock()
        res = await run(
            self._refund,
            self._client,
            keys.ws_keys(ws),
            [
                int(now * 1000),
                app_id,
                rid,
                token,
                self._bucket_s,
                billing_period(now),
                self._block_ms,
                self._idle_ms,
                *session,
                at,
                self._usage_fields,
            ],
        )
        return bool(res[0])
