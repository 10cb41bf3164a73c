"""Hostile request bodies on the admin port from a caller the route admits: what one
request may cost the admin process (its event loop also runs the flusher and the owner
notifications), not only what it may change.

Real sockets, a real redis-server and a real SQLite store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.admin_api import ROUTES
from gateway.admin_api.validation import MAX_ECHO, MAX_MEMBERS, MAX_PROBLEMS
from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def post(admin: Admin, token: str, body: dict[str, Any]) -> tuple[int, Any]:
    data = orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    return await admin.api("POST", "/v1/workspaces", token, data=data, headers=headers)


async def test_a_body_of_many_unknown_members_is_refused_before_it_is_validated(
    admin: Admin,
) -> None:
    """Any user may POST /v1/workspaces. A body of 20,000 unknown members (200 KB, a
    fifth of the body limit) had its 20,000 problems deduplicated pairwise, in time
    quadratic in their number (a 1 MiB body held the admin process's event loop for
    minutes), and all of them sent back. A body object of more than MAX_MEMBERS members
    is now refused as such, before pydantic builds an error for each; and nothing is
    created."""
    _, token = await admin.new_user("mallory")
    before = await snapshot(admin)
    status, problem = await post(
        admin, token, {"name": "Shop", **{f"m{i}": 1 for i in range(20_000)}}
    )
    assert status == 422, problem
    assert problem["errors"] == [
        {"field": "body", "message": f"has 20001 members, at most {MAX_MEMBERS}"}
    ]
    assert await snapshot(admin) == before


async def test_a_422_names_the_first_problems_each_once(admin: Admin) -> None:
    """Within the members a body may have, its 422 names the first MAX_PROBLEMS problems,
    in the body's order, each once (pydantic may report one twice)."""
    _, token = await admin.new_user("mallory")
    members = {f"m{i}": 1 for i in range(MAX_MEMBERS - 1)}
    status, problem = await post(admin, token, {"name": 7, **members})
    assert status == 422, problem
    assert problem["field"] == "name"
    assert problem["errors"] == [
        {"field": "name", "message": "Input should be a valid string"},
        *({"field": f"m{i}", "message": "unknown member"} for i in range(MAX_PROBLEMS - 1)),
    ]


def test_every_body_of_the_table_fits_the_member_cap() -> None:
    widest = max(len(r.body.model_fields) for r in ROUTES if r.body is not None)
    assert widest < MAX_MEMBERS


async def test_a_422_echoes_member_names_cut_short(admin: Admin) -> None:
    """A member's name is the caller's, as long as the body limit allows: a 200,000
    character unknown member came back whole three times (``field``, ``errors``,
    ``detail``), and a query parameter's name given twice likewise. Each echoed name is
    now at most MAX_ECHO characters, the cut one ending in an ellipsis."""
    _, token = await admin.new_user("mallory")
    long = "m" * 200_000
    status, problem = await post(admin, token, {"name": "Shop", long: 1, "short": 1})
    assert status == 422, problem
    cut = "m" * (MAX_ECHO - 1) + "\u2026"
    assert problem["field"] == cut
    assert problem["errors"] == [
        {"field": cut, "message": "unknown member"},
        {"field": "short", "message": "unknown member"},
    ]
    assert len(orjson.dumps(problem)) < 1_000, len(orjson.dumps(problem))
    name = "q" * 2_000
    status, problem = await admin.api("GET", f"/v1/workspaces?{name}=1&{name}=2", token)
    assert status == 422, problem
    assert problem["errors"] == [
        {"field": "q" * (MAX_ECHO - 1) + "\u2026", "message": "given more than once"}
    ]
