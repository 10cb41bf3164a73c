"""The durable store: source of truth for accounts, licences, the credit ledger, usage.

``open_store(url)`` picks the backend from the URL:

* ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` - embedded default;
* ``postgresql://user@host:port/db`` (or ``postgres://``) - production, an asyncpg pool.

Money is ``int`` micro-dollars and every time ``int`` epoch milliseconds (UTC), stored
as ``BIGINT`` in both backends. Call ``await store.migrate()`` before first use.
"""

from __future__ import annotations

from typing import Any

from config.urls import mask_url, sqlite_path
from meter.store.base import Store
from meter.store.directory import Person
from meter.store.errors import (
    BadValue,
    CapReached,
    DuplicateKey,
    MissingReference,
    NotMember,
    OwnerChanged,
    OwnsApps,
    Rejected,
    Retryable,
    StoreError,
)
from meter.store.invitations import Caps, Invitation, OpenInvitation
from meter.store.models import (
    ApiToken,
    App,
    AppChannel,
    AuditEntry,
    Checkout,
    Collaborator,
    LedgerEntry,
    Licence,
    OutboxEvent,
    PoolTotals,
    UpgradeRequest,
    User,
    Workspace,
    now_ms,
)
from meter.store.usage_rows import DeadLetter, FlushBatch, SessionRow, UsagePoint, UsageRow

__all__ = [
    "ApiToken",
    "App",
    "AppChannel",
    "AuditEntry",
    "BadValue",
    "CapReached",
    "Caps",
    "Checkout",
    "Collaborator",
    "DeadLetter",
    "DuplicateKey",
    "FlushBatch",
    "Invitation",
    "LedgerEntry",
    "Licence",
    "MissingReference",
    "NotMember",
    "OpenInvitation",
    "OutboxEvent",
    "OwnerChanged",
    "OwnsApps",
    "Person",
    "PoolTotals",
    "Rejected",
    "Retryable",
    "SessionRow",
    "Store",
    "StoreError",
    "UpgradeRequest",
    "UsagePoint",
    "UsageRow",
    "User",
    "Workspace",
    "now_ms",
    "open_store",
]


def open_store(url: str, **options: Any) -> Store:
    """A store for ``url``; nothing is opened until first use or ``await store.connect()``.

    ``options`` go to the backend: ``busy_timeout_s`` (SQLite); ``min_size``,
    ``max_size``, ``command_timeout`` (PostgreSQL pool).
    """
    if url.startswith("sqlite://"):
        from meter.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url), **options)
    if url.startswith(("postgresql://", "postgres://")):
        from meter.store.postgres import PostgresStore

        return PostgresStore(url, **options)
    raise ValueError(f"store URL {mask_url(url)!r}: expected sqlite:///... or postgresql://...")
