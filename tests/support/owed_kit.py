"""Test helpers for fail-open debts (gateway/owed.py) on a real redis-server: a seeded
workspace with one contact_center app, an :class:`Owed` on an admitter of its own
(both closed at the end), debts of that app and its pool as Redis counts it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from config import Settings
from gateway.debts import Debt
from gateway.metrics import Metrics
from gateway.owed import Owed
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import Workspace, new_ws_id, seed
from tests.support.settings import make_settings

PRICE = 10_000  # contact_center: a request unit
POOL = 1_000_000


@dataclass
class OwedWorld:
    rclient: RedisClient
    clock: Clock
    cfg: Settings
    w: Workspace

    @property
    def app(self) -> str:
        return self.w.apps[0]

    def debt(self, user: str, token: str, key: str = "", digest: str = "") -> Debt:
        """A debt of the app on the web channel, served now."""
        return Debt(self.app, "web", user, key, token, "m", self.clock.now, digest)

    def debts(self, n: int) -> list[Debt]:
        """``n`` debts of users ``u0``.. with tokens ``tok0``.."""
        return [self.debt(f"u{i}", f"tok{i}") for i in range(n)]

    def stuck(self) -> Debt:
        """A debt of an app Redis does not know: it stays owed."""
        return Debt(f"{new_ws_id()}_app1", "web", "u", "", "stuck", "m", self.clock.now)

    async def pool(self) -> int:
        """The workspace's paid pool as Redis holds it."""
        return (await projection.read_balances(self.rclient, self.w.ws)).pool

    async def settled(self, owed: Owed, pool: int) -> None:
        """A settlement pass of ``owed`` succeeds and leaves nothing owed (no debt, no
        void pending); the pool is then ``pool``."""
        assert await owed.settle()
        assert not owed
        assert await self.pool() == pool


async def owed_world(rclient: RedisClient, redis_url: str, tmp_path: Path) -> OwedWorld:
    """A fail-open gateway's settings and a new workspace with ``POOL`` paid funds."""
    clock, cfg = Clock(), make_settings(redis_url, tmp_path, fail_mode="open")
    w = await seed(rclient, cfg, clock, pool=POOL, products=("contact_center",))
    return OwedWorld(rclient, clock, cfg, w)


def new_owed(adm: Admitter, **kw: Any) -> Owed:
    """An :class:`Owed` on ``adm`` (``kw``: chunk, limit, state_dir ...)."""
    return Owed(adm, Metrics(CollectorRegistry()), timeout=30.0, **kw)


@asynccontextmanager
async def owing(
    world: OwedWorld, *, on_batch: Callable[[int], None] | None = None, **kw: Any
) -> AsyncIterator[tuple[Admitter, Owed]]:
    """An admitter (``on_batch`` told each admit call's size) and an :class:`Owed` on
    it (:func:`new_owed`), both closed at the end."""
    adm = Admitter(world.rclient, world.cfg, clock=world.clock, on_batch=on_batch)
    owed = new_owed(adm, **kw)
    try:
        yield adm, owed
    finally:
        await owed.close(0)
        await adm.close()


@asynccontextmanager
async def forgiven_at_first_call(
    world: OwedWorld, debt: Debt, **kw: Any
) -> AsyncIterator[tuple[Owed, list[int]]]:
    """:func:`owing` (``kw``: the Owed's) where ``debt`` is forgiven (its bot fails) at
    the admitter's first admit call, while that call is on its way to Redis; yields the
    Owed and the sizes of the admit calls made."""
    owed: Owed | None  # bound by owing() below, before any admit call
    calls: list[int] = []

    def on_batch(size: int) -> None:
        calls.append(size)
        if len(calls) == 1:
            assert owed is not None
            owed.forgive(debt)

    async with owing(world, on_batch=on_batch, **kw) as (_, owed):
        yield owed, calls


def owe_all(owed: Owed, debts: list[Debt]) -> None:
    """Owe each of ``debts``, each accepted."""
    for d in debts:
        assert owed.owe(d)


async def owe_rounds(owed: Owed, world: OwedWorld, rounds: int, stuck: Debt) -> None:
    """``rounds`` outages of 25 debts each, each settled; ``stuck`` alone stays owed."""
    for r in range(rounds):
        for i in range(25):
            assert owed.owe(world.debt(f"u{i}", f"t{r}.{i}"))
        assert await owed.settle()
        assert owed.debts == [stuck]
