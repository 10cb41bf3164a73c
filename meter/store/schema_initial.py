"""Migration 1: the tables of the first schema (see :mod:`meter.store.schema`).

Append-only like every step: never edit this text once applied, add a migration instead.
"""

from __future__ import annotations

# Frozen: the refusal columns as migration 1 created them. Deriving them from today's
# refusal table would change an applied migration whenever that table grows; a new
# counted refusal needs a migration of its own (and a place in REFUSAL_REASONS).
MIGRATION_1_REFUSALS: tuple[str, ...] = (
    "unknown_app",
    "credits_exhausted",
    "free_credits_expired",
    "product_not_licensed",
    "app_suspended",
    "rate_limited",
    "usage_limit_reached",
    "metering_unavailable",
    "other",
)

_REFUSED_COLUMNS = ",\n    ".join(
    f"refused_{reason} BIGINT NOT NULL DEFAULT 0" for reason in MIGRATION_1_REFUSALS
)

INITIAL = f"""
CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users (lower(email));

CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'standard' CHECK (type IN ('standard', 'enterprise')),
    owner_id TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    free_expires_at BIGINT,
    webhook_url TEXT,
    webhook_secret TEXT
);

CREATE TABLE memberships (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    product TEXT NOT NULL,
    owner_id TEXT NOT NULL REFERENCES users (id),
    upstream_url TEXT,
    use_free_credits BOOLEAN NOT NULL DEFAULT TRUE,
    suspended BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX apps_workspace ON apps (workspace_id);

CREATE TABLE collaborators (
    app_id TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('developer', 'tester', 'viewer')),
    PRIMARY KEY (app_id, user_id)
);

CREATE TABLE licences (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    product TEXT NOT NULL,
    usage_limit BIGINT NOT NULL,
    per_minute INTEGER NOT NULL,
    per_hour INTEGER NOT NULL,
    PRIMARY KEY (workspace_id, product)
);

CREATE TABLE upgrade_requests (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    products {{json}} NOT NULL,
    message TEXT,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'granted')),
    created_at BIGINT NOT NULL,
    granted_at BIGINT
);
CREATE INDEX upgrade_requests_status ON upgrade_requests (status, created_at);

CREATE TABLE ledger (
    id {{id}},
    workspace_id TEXT NOT NULL,
    app_id TEXT,
    kind TEXT NOT NULL
        CHECK (kind IN ('grant_free', 'lapse', 'topup', 'refund_adjust', 'reconcile')),
    pool TEXT NOT NULL CHECK (pool IN ('free', 'paid')),
    amount BIGINT NOT NULL,
    reference TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    detail {{json}} NOT NULL,
    UNIQUE (workspace_id, reference)
);

CREATE TABLE usage_buckets (
    workspace_id TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    product TEXT NOT NULL,
    unit TEXT NOT NULL,
    units BIGINT NOT NULL DEFAULT 0,
    messages BIGINT NOT NULL DEFAULT 0,
    amount_free BIGINT NOT NULL DEFAULT 0,
    amount_app BIGINT NOT NULL DEFAULT 0,
    amount_pool BIGINT NOT NULL DEFAULT 0,
    amount_invoiced BIGINT NOT NULL DEFAULT 0,
    {_REFUSED_COLUMNS},
    PRIMARY KEY (workspace_id, bucket_start, app_id, channel, product, unit)
);

CREATE TABLE billing_sessions (
    workspace_id TEXT NOT NULL,
    id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    channel_user TEXT NOT NULL,
    product TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    end_ms BIGINT NOT NULL,
    messages BIGINT NOT NULL,
    amount BIGINT NOT NULL,
    seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, id)
);
CREATE INDEX billing_sessions_start ON billing_sessions (workspace_id, start_ms);

CREATE TABLE flush_batches (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    rows INTEGER NOT NULL,
    flushed_at BIGINT NOT NULL
);
CREATE INDEX flush_batches_workspace ON flush_batches (workspace_id, bucket_start);

CREATE TABLE audit_log (
    id {{id}},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before {{json}},
    after {{json}}
);
CREATE INDEX audit_log_target ON audit_log (target, at);

CREATE TABLE outbox (
    id {{id}},
    workspace_id TEXT NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    payload {{json}} NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    delivered_at BIGINT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;
"""
