"""Calls the gateway makes itself: owner notification webhooks, and the egress guard on
upstream and webhook URLs.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from config.fields import EgressAllow, Seconds


class OutboundSettings(BaseModel):
    # Owner notifications.
    webhook_timeout_s: Seconds = 5.0
    webhook_max_attempts: int = Field(12, ge=1)
    # Delivered notifications are reduced to tombstones (payload dropped, event id kept so
    # they are never sent again) this many days after delivery (0: kept whole for ever);
    # undelivered ones are never touched.
    outbox_retention_days: int = Field(30, ge=0)

    # Egress (SSRF guard, docs/design.md §3): networks (CIDR) and host names ("bot.internal",
    # "*.internal") that upstream and webhook URLs may reach although they are loopback,
    # private or link-local. The gateway's own host and ports stay refused regardless.
    egress_allow: EgressAllow = Field(default_factory=list)
