"""Versioned schema migrations, one portable SQL text per step.

Each step is written once and rendered for a dialect by substituting ``{id}`` (an
auto-increment primary key) and ``{json}`` (``JSONB`` on PostgreSQL, ``TEXT`` on SQLite).
Steps are append-only: never edit an applied step, add a new one.

Times are ``BIGINT`` epoch milliseconds (UTC) everywhere; money is ``BIGINT``
micro-dollars. Applied steps are recorded in ``schema_migrations``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meter.store.db import Conn
from meter.store.schema_claims import PAYMENT_CLAIMS, claim_manual_credits
from meter.store.schema_initial import INITIAL
from meter.store.schema_outbox import DELIVERED_BY_AGE, RETRY_GIVEN_UP
from meter.store.schema_reversals import PENDING as PENDING_REVERSALS
from meter.store.schema_reversals import POSTGRESQL as REVERSALS_PG
from meter.store.schema_reversals import REFUND_FAILURES, REVERSAL_EVENTS
from meter.store.schema_reversals import SQLITE as REVERSALS_SQLITE

_DIALECT = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "json": "TEXT"},
    "postgresql": {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "json": "JSONB"},
}

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)
"""

# Payments: the one free-credit grant per user, checkouts with the payment provider and
# every provider event received, and an index for the transactions list (newest first).
# A checkout is credited once: the ledger's unique
# (workspace_id, reference) with reference 'checkout:<provider session id>', and the
# session and payment intent ids are unique here. Users who already hold a grant from
# before this step keep it as their one grant.
_PAYMENTS = """
CREATE TABLE free_grants (
    user_id TEXT PRIMARY KEY REFERENCES users (id),
    workspace_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO free_grants (user_id, workspace_id, created_at)
SELECT w.owner_id, MIN(w.id), MIN(w.created_at) FROM workspaces w
JOIN ledger l ON l.workspace_id = w.id AND l.kind = 'grant_free'
GROUP BY w.owner_id;

CREATE TABLE checkouts (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    app_id TEXT,
    amount BIGINT NOT NULL CHECK (amount > 0),
    currency TEXT NOT NULL,
    provider TEXT NOT NULL,
    session_id TEXT UNIQUE,
    payment_intent TEXT UNIQUE,
    url TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('creating', 'open', 'paid', 'expired', 'failed', 'rejected')),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    detail {json} NOT NULL
);
CREATE INDEX checkouts_workspace ON checkouts (workspace_id, created_at);

CREATE TABLE payment_events (
    event_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    session_id TEXT,
    checkout_id TEXT,
    outcome TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX payment_events_session ON payment_events (session_id);

CREATE INDEX ledger_workspace_id ON ledger (workspace_id, id)
"""


# The owner's console (issue 11): API tokens a user can list, create and revoke (the
# token each user was created with becomes their first), and upgrade requests that an
# operator can decline with a reason. SQLite cannot change a CHECK constraint in place,
# so the requests table is rebuilt (the same statements work on PostgreSQL).
_CONSOLE = """
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id, created_at);
INSERT INTO api_tokens (id, user_id, name, token_hash, hint, created_at)
    SELECT 't' || substr(token_hash, 1, 16), id, 'initial token', token_hash, '', created_at
    FROM users;

CREATE TABLE upgrade_requests_v5 (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    products {json} NOT NULL,
    message TEXT,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'granted', 'declined')),
    created_at BIGINT NOT NULL,
    granted_at BIGINT,
    decided_at BIGINT,
    reason TEXT
);
INSERT INTO upgrade_requests_v5
    (id, workspace_id, products, message, status, created_at, granted_at, decided_at)
    SELECT id, workspace_id, products, message, status, created_at, granted_at, granted_at
    FROM upgrade_requests;
DROP TABLE upgrade_requests;
ALTER TABLE upgrade_requests_v5 RENAME TO upgrade_requests;
CREATE INDEX upgrade_requests_status ON upgrade_requests (status, created_at);
CREATE INDEX upgrade_requests_workspace ON upgrade_requests (workspace_id, created_at)
"""


# Console sign-in sessions (issue 11): kept in the store, not Redis, so an owner can still
# sign in and read stored history while Redis is down. Only the cookie's hash is kept.
_CONSOLE_SESSIONS = """
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at)
"""


# The owner's own low-balance threshold (micro-dollars); NULL: the operator's default.
_LOW_THRESHOLD = "ALTER TABLE workspaces ADD COLUMN low_balance_threshold BIGINT"

# The notifier claims a few pending events of each workspace in turn and postpones or
# parks a workspace's events together: pending events in that order.
_OUTBOX_BY_WORKSPACE = (
    "CREATE INDEX outbox_workspace_due ON outbox (workspace_id, next_attempt_at, id) "
    "WHERE delivered_at IS NULL"
)

# Shadow mode per app: metered and recorded, never refused.
_SHADOW = "ALTER TABLE apps ADD COLUMN shadow BOOLEAN NOT NULL DEFAULT FALSE"


# Flush batches the store rejected (flusher quarantine). ``content`` is JSON *text*, not
# {json}: PostgreSQL's JSONB cannot hold the \u0000 that made such a batch fail.
_FLUSH_DEAD_LETTERS = """
CREATE TABLE flush_dead_letters (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    content TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed_at BIGINT NOT NULL,
    last_failed_at BIGINT NOT NULL
);
CREATE INDEX flush_dead_letters_workspace ON flush_dead_letters (workspace_id, bucket_start)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: its SQL, then ``then`` (Python, for what portable SQL cannot say), in
    one transaction.

    ``rebuilds`` names the tables the step copies, drops and renames: on PostgreSQL each
    is locked ``ACCESS EXCLUSIVE`` before anything else, so a write by a gateway still
    running (an older version during a rolling upgrade) either commits before the copy
    (the step waits for it) or waits for the step and lands in the new table; without
    the lock, one committed after the copy began was lost with the old table. SQLite
    needs nothing: the step's ``BEGIN IMMEDIATE`` already holds the only write lock.
    Adding a lock to an applied step changes nothing it did.
    """

    version: int
    name: str
    sql: str
    rebuilds: tuple[str, ...] = ()
    then: Callable[[Conn], Awaitable[None]] | None = None
    postgresql: str | None = None  # the step on PostgreSQL, where its SQL is not portable

    def statements(self, dialect: str) -> list[str]:
        """The step rendered for ``dialect``, split into single statements."""
        sql = self.postgresql if dialect == "postgresql" and self.postgresql else self.sql
        text = sql.replace("{id}", _DIALECT[dialect]["id"])
        text = text.replace("{json}", _DIALECT[dialect]["json"])
        locks = [f"LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE" for t in self.rebuilds]
        head = locks if dialect == "postgresql" else []
        return [*head, *(s.strip() for s in text.split(";") if s.strip())]


# Channel authentication: one verification secret per app and channel, stored encrypted
# (Fernet tokens: the HMAC and HS256 schemes need the plain secret back).
_APP_CHANNELS = """
CREATE TABLE app_channels (
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    scheme TEXT NOT NULL,
    secret_enc TEXT NOT NULL,
    notify_secret_enc TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, channel)
)
"""

# Consent to membership (the invitation review): adding a member or collaborator only
# invites them; they join (a row of memberships / collaborators) when they accept, so
# every check that reads those tables sees a pending invitee as a stranger. Existing
# members and collaborators stay as they are (active). ``target`` is the workspace id
# (kind 'workspace') or the app id (kind 'app'): one pending invitation per target and
# user. ``user_id`` has no foreign key: an unknown user id is invited like a known one
# (the answer must not tell them apart), and nobody can ever accept that invitation.
_INVITATIONS = """
CREATE TABLE invitations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('workspace', 'app')),
    target TEXT NOT NULL,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    app_id TEXT REFERENCES apps (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    role TEXT CHECK (role IS NULL OR role IN ('developer', 'tester', 'viewer')),
    invited_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (target, user_id)
);
CREATE INDEX invitations_user ON invitations (user_id, created_at, id)
"""

# Workspaces a user owns are counted on every creation (max_workspaces_per_user).
_WORKSPACES_BY_OWNER = "CREATE INDEX workspaces_owner ON workspaces (owner_id)"

# The invitations one user made, counted against their cap (decision 0009).
_INVITER = "CREATE INDEX invitations_inviter ON invitations (invited_by, created_at)"

# A user's console sessions are capped at each sign-in and deleted with their token.
_CONSOLE_SESSIONS_BY_USER = (
    "CREATE INDEX console_sessions_user ON console_sessions (user_id, created_at)"
)

# Ordered, append-only. The SQL must not contain ';' other than as statement separator.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", INITIAL),
    Migration(2, "app_channels", _APP_CHANNELS),
    Migration(3, "payments", _PAYMENTS),
    Migration(4, "flush_dead_letters", _FLUSH_DEAD_LETTERS),
    Migration(5, "console: api tokens, declined upgrade requests", _CONSOLE, ("upgrade_requests",)),
    Migration(6, "console sessions", _CONSOLE_SESSIONS),
    Migration(8, "app shadow mode", _SHADOW),
    Migration(9, "workspace low-balance threshold", _LOW_THRESHOLD),
    Migration(10, "outbox: pending events by workspace", _OUTBOX_BY_WORKSPACE),
    Migration(11, "invitations: members and collaborators join by consent", _INVITATIONS),
    Migration(12, "workspaces by owner", _WORKSPACES_BY_OWNER),
    Migration(13, "invitations by inviter", _INVITER),
    Migration(
        14,
        "payment claims: one credit per payment, by webhook or by hand",
        PAYMENT_CLAIMS,
        ("checkouts",),
        claim_manual_credits,
    ),
    Migration(
        15,
        "ledger: payments reversed at the provider, disputes reinstated",
        REVERSALS_SQLITE,
        postgresql=REVERSALS_PG,
    ),
    Migration(16, "refunds and disputes before their payment's credit", PENDING_REVERSALS),
    Migration(17, "console sessions by user", _CONSOLE_SESSIONS_BY_USER),
    Migration(18, "refunds failed at the provider", REFUND_FAILURES),
    Migration(19, "payment claims: provider events of its reversals", REVERSAL_EVENTS),
    Migration(20, "outbox: events given up on are retried", RETRY_GIVEN_UP),
    Migration(21, "outbox: delivered events by age", DELIVERED_BY_AGE),
)


def latest_version() -> int:
    return MIGRATIONS[-1].version
