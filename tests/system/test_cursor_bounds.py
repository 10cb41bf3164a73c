"""A list cursor whose integer is beyond what the stores hold is 422 ``cursor``.

It was 503 ``store_unavailable`` on every list with an integer in its key (transactions,
workspaces, apps, upgrade requests): SQLite and PostgreSQL refused the parameter. Real
admin server, real Redis, SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.payments import BACKENDS, paying


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


def _cursor(kind: str, *key: Any) -> str:
    raw = json.dumps([kind, *key]).encode()  # orjson cannot write integers this large
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("big", [2**63, 2**64 - 1, -(2**63) - 1])
async def test_a_cursor_beyond_the_stores_integers_is_422(
    store_url: str, redis_url: str, big: int
) -> None:
    """Was 503 ``store_unavailable``: SQLite and PostgreSQL refused the integer."""
    async with paying(store_url, redis_url) as (admin, _):
        token, ws = await admin.owner_workspace()
        for path, key in (
            (f"/v1/workspaces/{ws}/transactions", ("transactions", big)),
            ("/v1/workspaces", ("workspaces", big, "w")),
            (f"/v1/workspaces/{ws}/apps", ("apps", big, "a")),
            (f"/v1/workspaces/{ws}/upgrade-requests", ("upgrade-requests", big, "r")),
        ):
            status, answer = await admin.api("GET", f"{path}?cursor={_cursor(*key)}", token)
            assert (status, answer.get("field")) == (422, "cursor"), (path, answer)
        limit = 2**63 - 1  # the largest integer still is a cursor
        page = await admin.ok("GET", f"/v1/workspaces/{ws}/transactions?cursor="
                              f"{_cursor('transactions', limit)}", token)  # fmt: skip
        assert len(page["transactions"]) == 1  # the free grant
