"""Hostile request bodies on the admin port from a caller the route admits: what one
request may cost the admin process (its event loop also runs the flusher and the owner
notifications), not only what it may change.

Real sockets, a real redis-server and a real SQLite store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from gateway.admin_api.validation import MAX_PROBLEMS
from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server, admin_settings, snapshot


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
        yield a


async def test_a_body_of_many_bad_members_is_told_apart_once_and_answered_in_short(
    admin: Admin,
) -> None:
    """Any user may POST /v1/workspaces: a body of 20,000 unknown members (200 KB, a
    fifth of the body limit) had its 20,000 problems deduplicated pairwise, in time
    quadratic in their number (a 1 MiB body held the admin process's event loop for
    minutes), and all of them sent back. Its 422 names the first MAX_PROBLEMS, in the
    body's order, and nothing is created."""
    _, token = await admin.new_user("mallory")
    members = {f"m{i}": 1 for i in range(20_000)}
    body = orjson.dumps({"name": "Shop", **members})
    before = await snapshot(admin)
    status, problem = await admin.api(
        "POST", "/v1/workspaces", token, data=body,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 422, problem
    assert problem["field"] == "m0"
    assert problem["errors"] == [
        {"field": f"m{i}", "message": "unknown member"} for i in range(MAX_PROBLEMS)
    ]
    assert await snapshot(admin) == before
