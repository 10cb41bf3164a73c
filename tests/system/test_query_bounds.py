"""Out-of-range query values are 422 problem+json naming the parameter, never a 5xx.

The usage and sessions routes of a real admin server (real Redis, real SQLite) get
hand-picked hostile values (huge, negative, NaN, infinities, exponents, other digit
scripts, years outside 1970-2200, control characters, repeats) and a seeded random
fuzz of each query parameter.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.adminkit import Admin, admin_server, admin_settings

ROUTES = ("usage", "sessions")
BAD_TIMES = [
    "999999999999999",  # the year 33658
    "9999999999999999999999",
    "7258118400001",  # just after 2200-01-01
    "-1",
    "-9999999999999",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "1e3",
    "0x10",
    "١٢٣٤",  # Arabic-Indic digits
    "１２３",  # fullwidth digits
    "",
    " ",
    "1 ",
    "9999-12-31T23:59:59",
    "10000-01-01",
    "1969-12-31T23:59:59Z",
    "0001-01-01",
    "2027-02-30",
    "2027-01-01T25:00",
    "2027-01-01T00:00+25:00",
    "\x00",
    "2027-01-01\x00",
    "x" * 41,
    "2027-01-01T00:00:00.000000000000000000000000Z",
]
BAD_OTHER = [
    ("granularity", "year"),
    ("granularity", ""),
    ("granularity", "DAY"),
    ("app_id", "x"),
    ("app_id", "-1"),
    ("channel", "NaN!"),
    ("channel", "x" * 33),
    ("channel", ""),
    ("bogus", "1"),
]
BAD_SESSIONS = [
    ("limit", "0"),
    ("limit", "-1"),
    ("limit", "201"),
    ("limit", "99999999999999999999"),
    ("limit", "NaN"),
    ("limit", "1e3"),
    ("order", "up"),
    ("cursor", ""),
    ("cursor", "x" * 401),
]


@pytest.fixture
async def owner(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Admin, str, str]]:
    async with admin_server(admin_settings(redis_url, tmp_path)) as admin:
        token, ws = await admin.owner_workspace()
        yield admin, token, ws


async def get(admin: Admin, token: str, ws: str, route: str, query: str) -> tuple[int, object]:
    return await admin.api("GET", f"/v1/workspaces/{ws}/{route}?{query}", token)


def assert_422(status: int, body: object, field: str, what: str) -> None:
    assert status == 422, (what, status, body)
    assert isinstance(body, dict), (what, body)
    assert body["status"] == 422, (what, body)
    assert body["code"] == "invalid_input", (what, body)
    assert body["field"] == field, (what, body)


async def test_hostile_query_values_are_422(owner: tuple[Admin, str, str]) -> None:
    admin, token, ws = owner
    for route in ROUTES:
        for name in ("from", "to"):
            for value in BAD_TIMES:
                status, body = await get(admin, token, ws, route, f"{name}={quote(value)}")
                assert_422(status, body, name, f"{route} {name}={value!r}")
        for name, value in BAD_OTHER + (BAD_SESSIONS if route == "sessions" else []):
            status, body = await get(admin, token, ws, route, f"{name}={quote(value)}")
            assert_422(status, body, name, f"{route} {name}={value!r}")
        status, body = await get(admin, token, ws, route, "to=1&to=2")
        assert_422(status, body, "to", f"{route} repeated to")
    # The edges themselves are fine.
    status, body = await get(admin, token, ws, "usage", "from=0&to=7258118400000&granularity=month")
    assert status == 422
    assert body["field"] == "from"
    status, _ = await get(admin, token, ws, "usage", "from=2199-12-01&to=2200-01-01")
    assert status == 200
    status, _ = await get(admin, token, ws, "sessions", "to=1")
    assert status == 200


def fuzz_value(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return str(rng.randint(-(10**30), 10**30))
    if kind == 1:
        return str(
            rng.choice([float("nan"), float("inf"), -float("inf"), rng.uniform(-1e20, 1e20)])
        )
    if kind == 2:
        return f"{rng.randint(-20000, 20000):04d}-{rng.randint(0, 13):02d}-{rng.randint(0, 32):02d}"
    if kind == 3:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randint(0, 12)))
    if kind == 4:
        return str(rng.randint(0, 10**16))
    return rng.choice(["day", "week", "hour", "month", "w1234_a1234", "web", ""])


async def test_fuzzed_query_values_never_fail_the_server(owner: tuple[Admin, str, str]) -> None:
    admin, token, ws = owner
    rng = random.Random(20261130)
    names = ("from", "to", "granularity", "app_id", "channel", "limit", "cursor")
    for i in range(400):
        route = ROUTES[i % 2]
        picked = rng.sample(names, rng.randint(1, 3))
        query = "&".join(f"{n}={quote(fuzz_value(rng))}" for n in picked)
        status, body = await get(admin, token, ws, route, query)
        assert status in (200, 422), (route, query, status, body)
        if status == 422:
            assert isinstance(body, dict), (query, body)
            assert body["code"] == "invalid_input", (query, body)
            assert body["field"] in (*names, "granularity"), (query, body)
