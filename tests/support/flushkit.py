"""Helpers shared by the flusher, export and reconcile tests: stores, seeding, totals."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config import Settings, load_catalog
from meter.accounts import projection
from meter.admission.decision import Decision
from meter.redis_layer.client import RedisClient
from meter.store import LedgerEntry, Store, User, Workspace, open_store
from tests.support.clock import Clock
from tests.support.metering import new_ws_id

USD = 1_000_000
SCALE = float(os.environ.get("CREDITGATE_TEST_SCALE", "1"))


def scaled(n: int, minimum: int = 1) -> int:
    """``n`` times ``CREDITGATE_TEST_SCALE`` (default 1), at least ``minimum``."""
    return max(minimum, int(n * SCALE))


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return dsn
    return f"sqlite:///{tmp_path / 'creditgate.db'}"


async def opened_store(url: str) -> AsyncIterator[Store]:
    store = open_store(url)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


@dataclass
class Seeded:
    ws: str
    apps: list[str] = field(default_factory=list)


async def seed_ws(
    client: RedisClient,
    store: Store | None,
    cfg: Settings,
    clock: Clock,
    *,
    products: list[str],
    free: int = 0,
    pool: int = 0,
    app_funds: int = 0,
) -> Seeded:
    """A workspace in Redis (and in the store with its ledger, when given)."""
    ws = new_ws_id()
    now_ms = int(clock.now * 1000)
    expires = int((clock.now + cfg.free_credit_validity_s) * 1000)
    await projection.put_workspace(client, ws, plan="standard", catalog=load_catalog())
    if store is not None:
        owner = "u" + ws
        await store.create_user(User(owner, f"{owner}@example.com", "Owner", "h" + ws, now_ms))
        await store.create_workspace(Workspace(ws, "test", owner, now_ms, free_expires_at=expires))
    out = Seeded(ws)
    for i, product in enumerate(products):
        app = f"{ws}_app{i:04d}"
        await projection.put_app(client, app, product=product)
        if store is not None:
            from meter.store import App

            await store.create_app(App(app, ws, f"app {i}", product, "u" + ws, now_ms))
        out.apps.append(app)

    async def grant(ref: str, kind: str, amount: int, app_id: str = "") -> None:
        await projection.grant(
            client, ws, reference=ref, kind="free" if kind == "grant_free" else "funds",
            amount=amount, low_threshold=cfg.low_balance_threshold, app_id=app_id,
            free_expires_ms=expires,
        )  # fmt: skip
        if store is not None:
            await store.add_ledger_entry(
                LedgerEntry(ws, kind, amount, ref, now_ms, app_id=app_id or None)  # type: ignore[arg-type]
            )

    if free:
        await grant("free", "grant_free", free)
    if pool:
        await grant("pool", "topup", pool)
    if app_funds:
        for app in out.apps:
            await grant(f"funds-{app}", "topup", app_funds, app)
    return out


@dataclass
class Expected:
    """Sums over admission decisions, to compare with the store."""

    units: int = 0
    messages: int = 0
    free: int = 0
    app: int = 0
    pool: int = 0
    refused: int = 0

    def add(self, d: Decision) -> None:
        if d.admitted:
            if not d.duplicate:
                self.messages += 1
            self.units += d.units
            self.free += d.free
            self.app += d.app
            self.pool += d.pool
        else:
            self.refused += 1

    @property
    def amount(self) -> int:
        return self.free + self.app + self.pool
