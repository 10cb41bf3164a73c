"""Settling one debt of :mod:`gateway.owed` (a message served without a decision, fail
mode ``open``) once Redis answers again: the charge it takes, counted and logged."""

from __future__ import annotations

import asyncio
import logging

from gateway.debts import Debt
from gateway.metrics import Metrics
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision
from meter.errors import InvalidInput
from meter.redis_layer import keys

log = logging.getLogger("gateway.owed")  # the logger these lines had in gateway/owed.py


async def settle_debt(
    admitter: Admitter,
    metrics: Metrics,
    d: Debt,
    within_s: float,
    rekeyed: dict[str, None] | None = None,
) -> bool:
    """Settle one debt; True when it must stay owed.

    A keyed debt Redis refuses as ``duplicate_delivery`` (its key names another
    message, or was honoured as often as allowed) was served all the same: it is
    charged as a message of its own, without the key (same token, so settling it
    again finds that charge), and its token added to ``rekeyed``: a void of its charge
    names the record without the key.

    A debt no admission can take (a channel user or key invalid, e.g. from a journal of
    another version, or damaged) is dropped, logged: raised, it ended the settling task
    and left every debt behind it unsettled. So is one whose app id or channel cannot
    exist (the admitter answers ``unknown_app`` without asking Redis): kept owed as an
    app Redis does not know yet, it was retried forever and its journal never emptied."""
    if keys.workspace_of(d.app_id) is None or not keys.CHANNEL_RE.fullmatch(d.channel):
        log.error("served message of app %r cannot be settled (no such app id or channel)"
                  ": dropped", d.app_id)  # fmt: skip
        return False
    try:
        dec = await _settle_as(admitter, d, d.key, within_s)
        if dec.reason == "duplicate_delivery" and d.key:
            if rekeyed is not None:
                rekeyed[d.token] = None
            dec = await _settle_as(admitter, d, "", within_s)
    except InvalidInput as exc:
        log.error("served message of app %s cannot be settled (%s): dropped", d.app_id, exc)
        return False
    if dec.reason == "unknown_app":
        return True
    if dec.admitted:
        if not dec.duplicate:
            metrics.charge(dec.free, dec.app, dec.pool)
            if dec.new_session:
                metrics.sessions_started.inc()
        if dec.owed:
            metrics.settled_on_credit.inc(dec.owed)
            msg = "served message of app %s settled on credit: %d of %d micro-dollars owed"
            log.warning(msg, d.app_id, dec.owed, dec.charged)
    else:
        log.warning(
            "served message of app %s settled as refused (%s): not charged",
            d.app_id,
            dec.reason,
        )
    return False


async def _settle_as(admitter: Admitter, d: Debt, key: str, within_s: float) -> Decision:
    args, digest = (d.app_id, d.channel, d.user, key), d.digest if key else ""
    call = admitter.settle(*args, kind=d.kind, token=d.token, at=d.at, digest=digest, host=d.host)
    return await asyncio.wait_for(call, within_s)
