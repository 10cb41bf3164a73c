"""The OpenAPI 3.1 document of the admin API, rendered from the route table.

Paths, parameters, request and response bodies all come from :data:`ROUTES` and the
pydantic models the API validates with, so the document cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaValue, models_json_schema

from gateway.admin_api.http import Route
from gateway.admin_api.routes import ROUTES
from gateway.admin_api.schemas import Problem
from gateway.problems import CONTENT_TYPE as PROBLEM_TYPE

Mode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
ERROR_TEXT = {
    400: "Malformed request (e.g. not JSON)",
    401: "Missing or unknown token",
    403: "Your role may not do this",
    404: "No such resource, or not visible to you",
    408: "The body did not arrive in time (ADMIN_BODY_TIMEOUT_S); the connection is closed",
    409: "Conflicts with the current state",
    413: "Body too large",
    422: "Invalid input; `field` names the member",
    502: "The payment provider failed; nothing was charged",
    503: "Redis or the store is unavailable; retry",
}


def _models(routes: tuple[Route, ...]) -> list[tuple[type[BaseModel], Mode]]:
    seen: dict[tuple[type[BaseModel], Mode], None] = {(Problem, "serialization"): None}
    for route in routes:
        for model, mode in ((route.body, "validation"), (route.response, "serialization")):
            if model is not None:
                seen[(model, mode)] = None  # type: ignore[index]
    return list(seen)


def _query_parameters(schema: JsonSchemaValue) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema.get("properties", {}).items()
    ]


Refs = Mapping[tuple[Any, Mode], JsonSchemaValue]


def _operation(route: Route, refs: Refs) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": n,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": p.pattern},
        }
        for n, p in route.params.items()
    ]
    if route.query is not None:
        params += _query_parameters(route.query.model_json_schema(ref_template=REF))
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        content: dict[str, Any] = {
            "application/json": {"schema": refs[(route.response, "serialization")]}
        }
        if route.csv:
            content["text/csv"] = {"schema": {"type": "string"}}
        ok["content"] = content
    responses: dict[str, Any] = {str(code): ok for code in (route.status, *route.also)}
    problem = {PROBLEM_TYPE: {"schema": refs[(Problem, "serialization")]}}
    errors = set(route.errors) | {503} | ({408, 413} if route.body else set())
    if route.access.authenticated:
        errors.add(401)
    else:
        errors -= {401, 403}
    for code in sorted(errors):
        responses[str(code)] = {"description": ERROR_TEXT[code], "content": problem}
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "description": f"Allowed: {route.access.who}.",
        "tags": [route.path.split("/")[2]],
        "security": [{"bearer": []}] if route.access.authenticated else [],
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
        }
    elif route.public and route.method == "POST":  # a provider's signed event, read raw
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return op


def build(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``."""
    refs, top = models_json_schema(_models(routes), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "creditgate admin API",
            "version": "1",
            "description": "Accounts, plans, credits and usage. Errors are RFC 9457 "
            "problem+json with a `code` member.",
        },
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


@cache
def document_bytes() -> bytes:
    """The document as served at ``/v1/openapi.json`` (built once)."""
    return orjson.dumps(build())
