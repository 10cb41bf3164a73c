"""Sessions and limits: billing sessions, rate limits, idempotency, refunds, tenant quotas.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.fields import DAY, Seconds


class LimitsSettings(BaseModel):
    session_block_s: Seconds = 900.0
    session_idle_s: Seconds = 900.0
    rate_per_minute: int = Field(600, ge=1)
    rate_per_hour: int = Field(18_000, ge=1)
    rate_minute_window_s: Seconds = 60.0
    rate_hour_window_s: Seconds = 3600.0
    idempotency_ttl_s: Seconds = DAY
    # Deliveries of one idempotency key that are served (the original included); the
    # next is refused 409 duplicate_delivery.
    idempotency_max_deliveries: int = Field(5, ge=1, le=1000)
    # Keyed messages that took no money (inside a paid billing session) whose key is
    # remembered the whole idempotency window, per app and window; past it a key is
    # remembered only the refund window (a later redelivery is a new message). Bounds
    # what anonymous clients can make Redis hold for free (admit_batch.lua free_ttl).
    idempotency_max_free_keys_per_app: int = Field(50_000, ge=1, le=100_000_000)
    # The same across a workspace's apps (a tenant may hold many apps).
    idempotency_max_free_keys_per_workspace: int = Field(100_000, ge=1, le=100_000_000)
    # A charge not confirmed as forwarded within this window (the gateway died between
    # the charge and the forward) is refunded by the sweeper.
    refund_window_s: Seconds = 120.0
    # Local state that must survive a crash of the process (forward confirmations).
    state_dir: str = "creditgate-state"

    # Tenant quotas: every workspace and app costs store rows and Redis hashes (and an
    # app up to idempotency_max_free_keys_per_app keys), so one tenant cannot fill the
    # shared Redis. Workspaces one user owns, and apps in one workspace whoever owns
    # them; one more is 409 too_many_workspaces / too_many_apps. Nobody is exempt
    # (users alone create them): raise the setting for a customer who needs more.
    max_workspaces_per_user: int = Field(20, ge=1, le=100_000)
    max_apps_per_workspace: int = Field(100, ge=1, le=100_000)
    max_channels_per_app: int = Field(20, ge=1, le=10_000)  # one more: 409 too_many_channels
    # Fields of a workspace's usage bucket (P:ag:<b>) past which a refusal on a channel
    # with no field there yet is counted under channel "(overflow)" (admit.lua): channel
    # names cost nothing, so refused traffic must not grow the hash (or the store's rows).
    max_usage_fields: int = Field(1000, ge=1, le=1_000_000)
