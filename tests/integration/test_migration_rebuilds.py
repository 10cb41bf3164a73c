"""Steps that rebuild a table (copy, drop, rename) keep what a running gateway writes.

During a rolling upgrade an older gateway keeps writing while one pod migrates. On
PostgreSQL a copy (``INSERT … SELECT``) does not wait for writers, so a write that
committed after the copy began was lost with the old table: a checkout an older webhook
marked paid went back to ``open`` (and its payment could be credited again by hand).
Each such step now locks its table first. Here an older gateway's transaction holds a
write open while ``migrate()`` runs; it commits once the migration is observed waiting
on it (``pg_stat_activity``), and its write must be in the rebuilt table.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from meter.store import Checkout, Store, StoreError, open_store
from meter.store.schema import MIGRATIONS

pytestmark = pytest.mark.postgres
USD = 1_000_000

_WAITING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


async def _migrated_before(store: Store, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import meter.store.postgres as pg

    with monkeypatch.context() as m:
        m.setattr(pg, "MIGRATIONS", tuple(s for s in MIGRATIONS if s.version < version))
        await store.migrate()
    async with store.connection() as c:  # as that version wrote them
        await c.execute(
            "INSERT INTO users (id, email, name, token_hash, created_at) "
            "VALUES ('u1', 'a@example.com', 'A', 'h1', 1)"
        )
        await c.execute(
            "INSERT INTO workspaces (id, name, owner_id, created_at) VALUES ('w1', 'One', 'u1', 1)"
        )


async def _migrate_while_writing(store: Store, dsn: str, version: int, *writes: str) -> None:
    """Run ``writes`` in an older gateway's transaction, start the migration, and commit
    them once the migration waits on that transaction's locks."""
    old = await asyncpg.connect(dsn)
    watch = await asyncpg.connect(dsn)
    try:
        tx = old.transaction()
        await tx.start()
        for sql in writes:
            await old.execute(sql)
        migrating = asyncio.create_task(store.migrate())
        while not migrating.done() and not await watch.fetchval(_WAITING):  # noqa: ASYNC110
            await asyncio.sleep(0)
        await tx.commit()
        assert version in await migrating
    finally:
        await old.close()
        await watch.close()


async def test_a_checkout_paid_during_migration_14_stays_paid(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(pg_dsn)
    try:
        await _migrated_before(store, 14, monkeypatch)
        co = Checkout("co1", "w1", 500 * USD, "usd", "stripe", "open", "user:u1", 1)
        assert await store.create_checkout_within(co, 5, since=0)
        assert await store.open_checkout(co.id, "cs_1", "https://pay.test/x")
        await _migrate_while_writing(
            store,
            pg_dsn,
            14,
            "UPDATE checkouts SET status = 'paid', payment_intent = 'pi_1', completed_at = 2 "
            "WHERE id = 'co1'",
            "INSERT INTO ledger (workspace_id, kind, pool, amount, reference, created_at, "
            f"detail) VALUES ('w1', 'topup', 'paid', {500 * USD}, 'checkout:cs_1', 2, '{{}}')",
        )
        stored = await store.get_checkout("co1")
        assert stored is not None
        assert (stored.status, stored.payment_intent) == ("paid", "pi_1")
        for name in ("co1", "cs_1", "pi_1"):  # claimed: no credit by hand under any name
            async with store.connection() as c:
                held = await c.fetchval(
                    "SELECT reference FROM payment_claims WHERE identifier = ?", name
                )
            assert held == "checkout:cs_1", name
    finally:
        await store.close()


async def test_an_upgrade_request_granted_during_migration_5_stays_granted(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(pg_dsn)
    try:
        await _migrated_before(store, 5, monkeypatch)
        async with store.connection() as c:
            await c.execute(
                "INSERT INTO upgrade_requests (id, workspace_id, products, status, created_at) "
                "VALUES ('r1', 'w1', '[]', 'open', 1)"
            )
        await _migrate_while_writing(
            store,
            pg_dsn,
            5,
            "UPDATE upgrade_requests SET status = 'granted', granted_at = 2 WHERE id = 'r1'",
        )
        async with store.connection() as c:
            row = await c.fetchrow(
                "SELECT status, granted_at, decided_at FROM upgrade_requests WHERE id = 'r1'"
            )
        assert row is not None
        assert (row["status"], row["granted_at"], row["decided_at"]) == ("granted", 2, 2)
    finally:
        await store.close()


async def test_a_step_behind_a_long_transaction_gives_up_instead_of_stalling(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration queued for a table lock makes every later query on that table queue
    behind it; one held up by a long transaction (an export, an open psql) must give up
    and say so, not keep the table's traffic waiting for as long as the other runs."""
    store = open_store(pg_dsn, lock_timeout_s=0.05, lock_tries=2)
    reader = await asyncpg.connect(pg_dsn)
    try:
        await _migrated_before(store, 14, monkeypatch)
        long_tx = reader.transaction()
        await long_tx.start()
        await reader.fetch("SELECT * FROM checkouts")  # holds ACCESS SHARE until it ends
        # The guard only bounds a hang of the code before this change (it waited for the
        # reader for ever); the assertion is the error, whatever the machine's speed.
        with pytest.raises(StoreError, match=r"migration 14 .*gave up"):
            await asyncio.wait_for(store.migrate(), 300)
        assert await store.schema_version() == 13  # nothing of the step applied
        await long_tx.rollback()
        # and the next run applies it (and any step after it)
        assert await store.migrate() == [s.version for s in MIGRATIONS if s.version >= 14]
    finally:
        await reader.close()
        await store.close()
