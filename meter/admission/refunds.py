"""Reversing a charged admission whose message was not served (``refund.lua``)."""

from __future__ import annotations

from collections.abc import Callable

from config import Settings
from meter.admission.decision import Decision
from meter.redis_layer import keys
from meter.redis_layer.billing_period import billing_period
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register, run


class Refunds:
    """``refund`` and ``void`` of :class:`~meter.admission.admitter.Admitter`."""

    def __init__(self, client: RedisClient, settings: Settings, clock: Callable[[], float]):
        self._client = client
        self._clock = clock
        self._refund = register(client, "refund")
        self._bucket_s = settings.flush_bucket_s
        self._block_ms = int(settings.session_block_s * 1000)
        self._idle_ms = int(settings.session_idle_s * 1000)

    async def refund(self, app_id: str, decision: Decision) -> bool:
        """Reverse a charged admission whose message was not served. Idempotent.

        Returns whether something was refunded (False for duplicates, uncharged messages,
        a second call, or a token whose record was already replaced by a retry).
        """
        if decision.duplicate or (decision.units == 0 and decision.code == 0):
            return False
        return await self.void(app_id, decision.rid, decision.token)

    async def void(self, app_id: str, rid: str, token: str) -> bool:
        """Refund the charge of attempt ``token`` if it exists (e.g. after an ambiguous
        timeout). ``rid`` is the charge record's id
        (:func:`meter.redis_layer.keys.record_id`); an empty ``token`` refunds it only
        while it is still reserved (the sweeper)."""
        ws = keys.workspace_of(app_id)
        if ws is None:
            return False
        now = self._clock()
        res = await run(
            self._refund,
            self._client,
            [keys.ws_prefix(ws)],
            [
                int(now * 1000),
                app_id,
                rid,
                token,
                self._bucket_s,
                billing_period(now),
                self._block_ms,
                self._idle_ms,
            ],
        )
        return bool(res[0])
