"""Helpers shared by the flusher, export and reconcile tests: stores, seeding, totals."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from config import Settings
from meter.accounts import seeding
from meter.admission.decision import Decision
from meter.redis_layer.client import RedisClient
from meter.store import App, LedgerEntry, Store, User, Workspace, open_store
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
    """A new workspace in Redis (:func:`meter.accounts.seeding.seed`) and, when given, in
    the store with the ledger entries of the same grants."""
    ws = new_ws_id()
    out = Seeded(ws, [f"{ws}_app{i:04d}" for i in range(len(products))])
    apps = {
        app: {"product": product, "funds": app_funds}
        for app, product in zip(out.apps, products, strict=True)
    }
    await seeding.seed(client, cfg, ws, apps, free=free, pool=pool, now=clock.now)
    if store is not None:
        await _store_rows(store, cfg, clock, out, products, (free, pool, app_funds))
    return out


async def _store_rows(
    store: Store,
    cfg: Settings,
    clock: Clock,
    seeded: Seeded,
    products: list[str],
    grants: tuple[int, int, int],
) -> None:
    """The owner, workspace, apps and ledger entries of a workspace seeded in Redis."""
    ws, owner = seeded.ws, "u" + seeded.ws
    now_ms = int(clock.now * 1000)
    expires = int((clock.now + cfg.free_credit_validity_s) * 1000)
    await store.create_user(User(owner, f"{owner}@example.com", "Owner", "h" + ws, now_ms))
    await store.create_workspace(Workspace(ws, "test", owner, now_ms, free_expires_at=expires))
    for i, (app, product) in enumerate(zip(seeded.apps, products, strict=True)):
        await store.create_app(App(app, ws, f"app {i}", product, owner, now_ms))
    free, pool, app_funds = grants
    entries = [("free", "grant_free", free, None), ("pool", "topup", pool, None)]
    entries += [(f"funds-{app}", "topup", app_funds, app) for app in seeded.apps]
    for ref, kind, amount, app_id in entries:
        if amount:
            await store.add_ledger_entry(
                LedgerEntry(ws, kind, amount, ref, now_ms, app_id=app_id)  # type: ignore[arg-type]
            )


class Expected:
    """Sums over admission decisions, to compare with the store: worked out here from the
    decisions alone (the test oracle shares no code with the flusher's counters)."""

    SUMS = ("units", "messages", "free", "app", "pool", "refused")

    def __init__(self) -> None:
        self.units = self.messages = self.free = self.app = self.pool = self.refused = 0

    def add(self, d: Decision) -> None:
        if not d.admitted:
            self.refused += 1
            return
        self.messages += 0 if d.duplicate else 1
        self.units += d.units
        self.free += d.free
        self.app += d.app
        self.pool += d.pool

    def merge(self, other: Expected) -> None:
        for name in self.SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def amount(self) -> int:
        return self.free + self.app + self.pool
