"""RFC 9457 ``application/problem+json`` responses, and the one middleware that maps
errors of the gateway and of the metering core to them.

Every problem carries a machine-readable ``code`` (docs/design.md §3), e.g.::

    {"type": "urn:creditgate:problem:credits_exhausted", "title": "Credits exhausted",
     "status": 402, "code": "credits_exhausted", "detail": "..."}
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.forwarding import InvalidTail
from meter.admission.decision import Decision
from meter.errors import InvalidChannelUser, InvalidInput, MeteringUnavailable, NotFound
from meter.refusals import Refusal

PROBLEM_CODE = web.ResponseKey("problem_code", str)
# Bytes written to the client before the answer proper: an interim 100 Continue
# (gateway.http_rules.send_continue). An answer after one has not begun.
INTERIM_BYTES = web.RequestKey("creditgate.interim_bytes", int)

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:creditgate:problem:"

# Status and title of each refusal (docs/design.md §3), from meter.refusals.Refusal.
REFUSAL_STATUS: dict[str, tuple[int, str]] = {r.reason: (r.status, r.title) for r in Refusal}


class Problem(Exception):
    """An error answered as problem+json; raise it from a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail or title}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def response(self) -> web.Response:
        return problem_response(
            self.status, self.code, self.title, self.detail, headers=self.headers, extra=self.extra
        )


class Refused(Problem):
    """Admission refused the message; the bot is not called."""

    def __init__(self, reason: str, *, retry_after_ms: int = 0) -> None:
        status, title = REFUSAL_STATUS.get(reason, (403, reason.replace("_", " ").capitalize()))
        headers: dict[str, str] | None = None
        extra: dict[str, Any] | None = None
        if reason == "rate_limited":
            seconds = max(1, math.ceil(retry_after_ms / 1000))
            headers = {"Retry-After": str(seconds)}
            extra = {"retry_after": seconds}
        super().__init__(status, reason, title, headers=headers, extra=extra)
        self.reason = reason

    @classmethod
    def of(cls, decision: Decision) -> Refused:
        return cls(decision.reason or "unknown_app", retry_after_ms=decision.retry_after_ms)


def unknown_app(app_id: str) -> Refused:
    exc = Refused("unknown_app")
    exc.detail = f"no app {app_id!r}"
    return exc


def bot_failed() -> Problem:
    return Problem(502, "upstream_error", "Bot failed", "the bot answered with an error")


def bot_timeout() -> Problem:
    return Problem(504, "upstream_timeout", "Bot timed out", "the bot did not answer in time")


def bot_unavailable() -> Problem:
    return Problem(502, "upstream_unavailable", "Bot unavailable", "the bot could not be reached")


def bad_handshake_answer(what: str) -> Problem:
    """502 for a bot whose answer to a channel's handshake (``what``) is not its challenge."""
    return Problem(
        502,
        "invalid_handshake_answer",
        "Bot did not answer the handshake",
        f"the bot's answer to the {what} is not its challenge",
    )


def metering_unavailable() -> Problem:
    return Problem(
        503,
        "metering_unavailable",
        "Metering unavailable",
        "the usage meter did not answer; retry later",
        headers={"Retry-After": "1"},
    )


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The problem+json document (both traffic servers render it with this)."""
    body: dict[str, Any] = {"type": TYPE_PREFIX + code, "title": title, "status": status}
    body["code"] = code
    if detail:
        body["detail"] = detail
    if extra:
        body.update(extra)
    return orjson.dumps(body)


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> web.Response:
    resp = web.Response(
        status=status,
        body=problem_body(status, code, title, detail, extra),
        content_type=CONTENT_TYPE,
        headers=headers,
    )
    resp[PROBLEM_CODE] = code  # for the access log
    return resp


def problem_of(exc: BaseException) -> Problem | None:
    """The problem an error of the gateway or the metering core is answered with;
    ``None`` for anything else (an internal error)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, MeteringUnavailable):
        return metering_unavailable()
    if isinstance(exc, InvalidChannelUser):
        return Problem(400, "invalid_channel_user", "Invalid channel user", str(exc))
    if isinstance(exc, InvalidInput):
        return Problem(400, "invalid_input", "Invalid input", str(exc))
    if isinstance(exc, InvalidTail):
        return Problem(
            400, "invalid_path", "Invalid path", "the path may not contain '.' or '..' segments"
        )
    if isinstance(exc, NotFound):
        return Problem(404, "not_found", "Not found", str(exc))
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


Answer = Callable[[web.Request, Exception], web.StreamResponse | None]


def answering(answer: Answer) -> Middleware:
    """A middleware answering aiohttp's own HTTP errors with :func:`http_problem` and any
    other error as ``answer`` says (raised on where it says None)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if (resp := http_problem(exc)) is None:
                raise
            return resp
        except Exception as exc:
            # An answer already begun (a streamed body) cannot become another: aiohttp
            # then ends the connection without the final chunk, so the cut shows.
            begun = request.writer.output_size > request.get(INTERIM_BYTES, 0)
            if begun or (answered := answer(request, exc)) is None:
                raise
            return answered

    return middleware


def _gateway_answer(_request: web.Request, exc: Exception) -> web.Response | None:
    problem = problem_of(exc)
    return None if problem is None else problem.response()


# Map :class:`Problem` and the metering core's errors to problem+json.
problem_middleware = answering(_gateway_answer)


def http_problem(exc: web.HTTPException) -> web.Response | None:
    """aiohttp's own HTTP error (404, 405 ...) as problem+json; None for one that is no
    error or is a problem already (raise it on)."""
    if exc.status < 400 or exc.content_type == CONTENT_TYPE:
        return None
    code = exc.reason.lower().replace(" ", "_").replace("-", "_")
    return problem_response(exc.status, code, exc.reason, headers=_keep(exc.headers))


def _keep(headers: Mapping[str, str]) -> dict[str, str] | None:
    # e.g. Allow on 405; the rest (Content-Type/-Length) belongs to the old body.
    kept = {k: v for k, v in headers.items() if k.lower() in ("allow", "retry-after")}
    return kept or None
