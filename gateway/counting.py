"""Each traffic request counted in flight and by outcome (``/hooks`` and ``/notify``),
and :func:`outcome_of`, the outcome of one that ended in an error, for both servers.

``error`` pages the operator (CreditgateHighErrorRate), so it is only what the gateway
itself got wrong; what a client or a bot can cause is theirs. Cases decided on purpose:

* A client that leaves or stalls while its body is read (499 ``client_gone``, 408, 400:
  :mod:`gateway.request_body`) is ``client_error``, on a signed channel too (the body is
  read before the signature is checked: anyone can do it).
* A message still waiting for a bot connection when SIGTERM's grace ends (502
  ``upstream_unavailable``: :class:`gateway.bot_connector.ShuttingDown`, on the fast
  path :meth:`gateway.fastpath.pool.Pool.close`'s ``ConnectFailed``; refunded, never
  sent) is ``bot_error``: the stop is the gateway's, but it comes with every rollout,
  and a message is still waiting only when its bot (or every connection of the worker)
  stayed busy through the whole grace, so ``error`` would page on ordinary deploys
  behind a slow bot.
* A message that waited past the connect timeout for a place (504/502, ``connect``) is
  ``bot_error`` whether the place it waited for was its bot's (``limit_per_host``) or
  the worker's (``limit``), since busy bots hold both. A worker cap set too low for
  healthy traffic is then the gateway's own fault counted as the bots': it shows as
  ``creditgate_upstream_seconds{outcome="connect"}`` while the bots answer (and
  CreditgateNoBotAnswers fires only when none does).
"""

from __future__ import annotations

from collections.abc import Awaitable

from aiohttp import web

from gateway.metering import Charge
from gateway.metrics import Metrics
from gateway.problems import Refused, problem_of

Forwarded = tuple[web.StreamResponse, Charge | None]  # the answer, and what was admitted

# Problems the app's bot or its configured address answers for (502/504): one tenant's
# broken bot must not look like the gateway failing (gateway.metrics: bot_error).
BOT_PROBLEMS = frozenset(
    {
        "upstream_error",
        "upstream_timeout",
        "upstream_unavailable",
        "upstream_forbidden",
        "no_upstream",
        "invalid_handshake_answer",
    }
)
# 5xx problems the request itself causes: it already passed through this gateway.
_CLIENT_5XX = frozenset({"loop_detected"})


def outcome_of(exc: BaseException) -> str:
    """The outcome a request that ended in ``exc`` is counted as (see
    :mod:`gateway.metrics`): ``refused``, ``client_error`` (``unknown_app`` too: anyone
    can name an app that does not exist), ``bot_error``, else ``error``, the gateway's own
    (an internal error, metering or channel keys unavailable)."""
    if isinstance(exc, Refused):
        return "client_error" if exc.reason == "unknown_app" else "refused"
    problem = problem_of(exc)
    if problem is None:
        return "error"  # answered 500 internal_error
    if problem.code in BOT_PROBLEMS:
        return "bot_error"
    if problem.status < 500 or problem.code in _CLIENT_5XX:
        return "client_error"
    return "error"


async def counted(metrics: Metrics, label: str, handle: Awaitable[Forwarded]) -> web.StreamResponse:
    """One traffic request, counted in flight and by outcome: ``admitted`` or
    ``unmetered`` by its admission, else by its error (:func:`outcome_of`)."""
    outcome = "error"
    metrics.in_flight.inc()
    try:
        resp, admission = await handle
        outcome = "unmetered" if admission is None else "admitted"
        return resp
    except Exception as exc:
        outcome = outcome_of(exc)
        raise
    finally:
        metrics.in_flight.dec()
        metrics.count(label, outcome)


def bot_failing(status: int) -> bool:
    """An answer of the bot that is its failure (``5xx``, refunded per ``refund_on``): a
    5xx, or an informational status (a 101 nobody asked for; :mod:`gateway.proxy`)."""
    return status >= 500 or status < 200
