"""The admin API's errors as problem+json, in one place (docs/design.md §3): a refused
request (4xx), an unreachable Redis or store (503), anything else (500, logged).

A value the store cannot hold (:class:`~meter.store.BadValue`) is the request's input
that validation missed: 422, logged as a warning (a check is missing). Any other
:class:`~meter.store.Rejected` (a violated constraint) is this code's own data: 500,
never 503 "retry later", since the same request cannot succeed."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from gateway.admin_api.validation import BadRequest, Invalid
from gateway.problems import Problem, answering, problem_response
from meter.accounts.payments import PaymentsNotConfigured, ProviderError
from meter.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    MeteringUnavailable,
    NotFound,
    Unauthorized,
)
from meter.store import BadValue, DuplicateKey, OwnerChanged, Rejected, StoreError

log = logging.getLogger(__name__)


def _problem(
    status: int, code: str, title: str, detail: str, *, field: str | None = None, **extra: Any
) -> web.Response:
    more: dict[str, Any] = dict(extra)
    if field is not None:
        more["field"] = field
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return problem_response(status, code, title, detail, headers=headers, extra=more)


def _answer(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, Problem):
        # BodyTimeout: 408, closing the connection (the body may still come); a body
        # refused as it arrived (gateway.chunk_framing: 413 too_many_chunks).
        return exc.response()
    answer = _refusal(exc) or _outage(exc)
    if answer is None:
        log.exception("admin API: %s %s failed", request.method, request.raw_path.partition("?")[0])
        return _problem(500, "internal_error", "Internal error", "see the server log")
    return answer


# Map every error of the admin API to problem+json (one place, docs/design.md §3).
errors = answering(_answer)


def _refusal(exc: Exception) -> web.Response | None:
    """The answer to a request the API refuses (4xx), or to a payment provider's
    failure; None for any other error."""
    match exc:
        case Unauthorized():
            return _problem(401, "unauthorized", "Unauthorized", str(exc))
        case BadRequest():
            return _problem(
                400, "malformed_request", "Malformed request", str(exc), field=exc.field
            )
        case Invalid():
            first = exc.problems[0]["field"]
            return _problem(
                422, "invalid_input", "Invalid input", str(exc), field=first, errors=exc.problems
            )
        case InvalidInput():
            problems = [{"field": exc.field, "message": exc.message}]
            return _problem(
                422, "invalid_input", "Invalid input", str(exc), field=exc.field, errors=problems
            )
        case Forbidden():
            return _problem(403, exc.code, "Forbidden", str(exc))
        case NotFound():
            return _problem(
                404, "not_found", "Not found", f"no {exc.kind} {exc.ident!r} (or not yours)"
            )
        case Conflict():
            return _problem(409, exc.code, "Conflict", str(exc), field=exc.field)
        case PaymentsNotConfigured():
            return _problem(503, "payments_not_configured", "Payments not configured", str(exc))
        case ProviderError():
            return _problem(502, "payment_provider_error", "Payment provider error", str(exc))
    return _store_refusal(exc)


def _store_refusal(exc: Exception) -> web.Response | None:
    """The answer to a write the store refused for the request's sake (4xx)."""
    match exc:
        case OwnerChanged():
            # The caller was authorized as the app's owner, and the app changed hands
            # before the write: nothing was written (a former owner never changes what
            # the new owner now runs and pays for).
            detail = f"{exc}: it was handed over after your role was checked; nothing changed"
            return _problem(409, "owner_changed", "App owner changed", detail)
        case DuplicateKey():
            return _problem(409, "conflict", "Conflict", str(exc))
        case BadValue():
            log.warning("admin API: the store refused a value (validation missed it): %r", exc)
            detail = "a value of this request cannot be stored (e.g. a control character)"
            return _problem(422, "invalid_input", "Invalid input", detail, errors=[])
    return None


def _outage(exc: Exception) -> web.Response | None:
    """503 while Redis or the store is unreachable; None for any other error."""
    if isinstance(exc, MeteringUnavailable | RedisError | ConnectionError):
        log.warning("admin API: redis unavailable: %r", exc)
        return _problem(503, "metering_unavailable", "Metering unavailable", "retry later")
    if isinstance(exc, StoreError) and not isinstance(exc, Rejected):
        log.warning("admin API: store unavailable: %r", exc)
        return _problem(503, "store_unavailable", "Store unavailable", "retry later")
    return None
