"""Reading a request's body and query into the route's pydantic models.

A body not in within the admin port's deadline is :class:`BodyTimeout` (408, the
connection closed: :func:`read_raw`); malformed input is :class:`BadRequest` (400);
input that breaks the schema is :class:`Invalid` (422) naming its bad fields (the first
:data:`MAX_PROBLEMS`, each name cut to :data:`MAX_ECHO` characters), with a hint for a
pattern mismatch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import UnionType
from typing import Any, TypeVar, Union, get_origin

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from gateway.admin_api.schemas import PATTERN_HINTS
from gateway.problems import Problem

M = TypeVar("M", bound=BaseModel)
# Problems one 422 names at most. A body may hold as many bad members as fit in the
# admin port's body limit (1 MiB: some 100,000 unknown ones); they are told apart in one
# pass over pydantic's errors, and the answer names the first ones only.
MAX_PROBLEMS = 50
# Members one body object may hold: a request model has a handful, so more are unknown
# members, refused before pydantic builds one error for each (some 0.3 s of the event loop
# for the 110,000 a 1 MiB body holds).
MAX_MEMBERS = 64
# Characters of a field's name a problem echoes at most: a member's name is the caller's,
# as long as the body limit allows (a 1 MiB name came back whole, in `field`, `errors` and
# `detail`); a longer one ends in an ellipsis.
MAX_ECHO = 80


def echoed(name: str) -> str:
    """``name`` as a problem may echo it: at most :data:`MAX_ECHO` characters."""
    return name if len(name) <= MAX_ECHO else name[: MAX_ECHO - 1] + "\u2026"


class BodyTimeout(Problem):
    """A request body not in within its deadline (408): the connection is not kept, as
    the rest of the body may still come (aiohttp discards what does for at most its
    lingering time, ``body_linger_s``, so that the client reads the answer, then closes)."""

    def __init__(self, within_s: float) -> None:
        detail = f"the request body did not arrive within {within_s:g} s"
        super().__init__(408, "body_timeout", "Request timeout", detail)

    def response(self) -> web.Response:
        resp = super().response()
        resp.force_close()
        return resp


async def read_raw(request: web.Request, within_s: float) -> bytes:
    """The whole body, in within ``within_s`` seconds of this call (else
    :class:`BodyTimeout`): a body trickling in, or held back, does not hold the request
    open (and what it was allowed to do when it began, see
    :func:`gateway.admin_api.http.endpoint`) for longer."""
    try:
        async with asyncio.timeout(within_s):
            raw = await request.read()  # (a chunked body over its bound: 413 here)
    except TimeoutError:
        raise BodyTimeout(within_s) from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":  # never inflated (gateway.http_server): refused as such
        raise Problem(
            415,
            "unsupported_content_encoding",
            "Unsupported content encoding",
            "the admin API takes request bodies without a Content-Encoding",
        )
    return raw


class BadRequest(Exception):
    """Input that is not even well-formed (400), e.g. malformed JSON."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class Invalid(Exception):
    """Well-formed input that breaks the schema (422): every problem, by field."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['message']}" for p in problems))
        self.problems = problems


def _unions(model: type[BaseModel]) -> set[str]:
    """Members (by JSON name) whose type is a union: pydantic tags their errors' loc."""
    return {
        info.alias or name
        for name, info in model.model_fields.items()
        if get_origin(info.annotation) in (Union, UnionType)
    }


def _field(err: ErrorDetails, unions: set[str]) -> str:
    loc = list(err["loc"])
    if len(loc) > 1 and loc[0] in unions:
        del loc[1]  # the union member's tag, e.g. "constrained-str"
    return echoed(".".join(str(p) for p in loc if p != "[key]") or "body")


def _message(err: ErrorDetails) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown member"
    if err["type"] == "missing":
        return "is required"
    if err["type"] == "string_pattern_mismatch":
        pattern = str((err.get("ctx") or {}).get("pattern", ""))
        return PATTERN_HINTS.get(pattern, f"must match {pattern}")
    return str(err["msg"]).removeprefix("Value error, ")


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or :class:`Invalid` naming its bad fields, each once (the
    first :data:`MAX_PROBLEMS` of them)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        unions = _unions(model)
        seen: dict[tuple[str, str], None] = {}  # insertion-ordered, each looked up in O(1)
        for err in exc.errors():
            if err["type"] == "none_required":  # the "or null" member of an optional
                continue
            seen.setdefault((_field(err, unions), _message(err)))
            if len(seen) == MAX_PROBLEMS:
                break
        problems = [{"field": f, "message": m} for f, m in seen]
        raise Invalid(problems or [{"field": "body", "message": "invalid"}]) from None


def parse_body(
    raw: bytes, model: type[M], before: Callable[[dict[str, Any]], None] | None = None
) -> M:
    """The JSON object body ``raw`` as ``model``; ``before`` sees the parsed object first
    (a check of its member names that must come before validation); an object of more
    than :data:`MAX_MEMBERS` members is :class:`Invalid` as such."""
    if not raw.strip():
        raise BadRequest("body", "a JSON object is required")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("body", f"malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest("body", "must be a JSON object")
    if before is not None:
        before(data)
    if len(data) > MAX_MEMBERS:
        raise Invalid(
            [{"field": "body", "message": f"has {len(data)} members, at most {MAX_MEMBERS}"}]
        )
    return validate(model, data)


def read_query(request: web.Request, model: type[M]) -> M:
    data: dict[str, str] = {}
    for name, value in request.query.items():
        if name in data:
            raise Invalid([{"field": echoed(name), "message": "given more than once"}])
        data[name] = value
    return validate(model, data)
