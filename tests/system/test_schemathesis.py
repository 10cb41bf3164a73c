"""Property-based API testing with schemathesis against a live admin server.

The admin application of ``create_app`` serves on a free loopback port (real Redis, real
SQLite); the ``schemathesis`` CLI reads ``/v1/openapi.json`` from it and fuzzes every
operation, once as the operator and once as a workspace owner, with the path ids pinned
to a real workspace and app so requests reach the handlers. It asserts that no response
is a 5xx and that every response matches its documented status, content type, headers and
schema. Examples are limited so the whole run stays well under two minutes. The two runs
go side by side, each in its own directory: one waits on the server while the other
generates its next case (one after the other they took twice as long).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.webhooks import WebhookOptions
from tests.support.adminkit import Admin, admin_server
from tests.support.settings import OPERATOR_TOKEN
from tests.support.stripe_standin import settings_with_stripe, stripe_standin

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
)
MAX_EXAMPLES = 40
# Only a guard against a hung run, never a bound on speed: a run takes about a minute,
# while the other test process and whatever else shares the 2-core machine run beside it.
RUN_TIMEOUT_S = 600


def schemathesis_bin() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'", pytrace=False)
    return found


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path) -> AsyncIterator[Admin]:
    async with stripe_standin() as standin:
        # Payments configured against the local Stripe stand-in (a 503 would be a failure).
        settings = settings_with_stripe(f"sqlite:///{tmp_path}/store.db", redis_url, standin)
        # Delivery stays idle: fuzzed webhook URLs must never be called (loopback only).
        async with admin_server(settings, webhooks=WebhookOptions(poll_s=3600)) as a:
            yield a


def write_config(path: Path, params: dict[str, str]) -> Path:
    """A schemathesis config pinning path parameters to real ids."""
    path.write_text("[parameters]\n" + "".join(f'"path.{k}" = "{v}"\n' for k, v in params.items()))
    return path


def workdir(path: Path) -> Path:
    """A run's own directory (schemathesis and hypothesis write theirs there)."""
    path.mkdir()
    return path


async def run_schemathesis(admin: Admin, token: str, config: Path, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        schemathesis_bin(),
        "--config-file",
        str(config),
        "run",
        f"{admin.url}/v1/openapi.json",
        "--url",
        admin.url,
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--seed",
        "20270115",
        "--no-shrink",
        "--request-timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-20_000:]
    return text


async def test_no_server_errors_and_every_response_matches_the_schema(
    admin: Admin, tmp_path: Path
) -> None:
    owner, ws = await admin.owner_workspace()
    app = {"name": "bot", "product": "automation"}
    app_id = (await admin.ok("POST", f"/v1/workspaces/{ws}/apps", owner, app))["id"]
    config = write_config(tmp_path / "schemathesis.toml", {"ws": ws, "app": app_id})
    as_owner, as_operator = await asyncio.gather(
        run_schemathesis(admin, owner, config, workdir(tmp_path / "owner")),
        run_schemathesis(admin, OPERATOR_TOKEN, config, workdir(tmp_path / "operator")),
    )
    for text in (as_owner, as_operator):
        assert "No issues found" in text or " passed" in text, text[-5000:]
