"""Durable usage: the flusher's buckets and quarantine, the projection check.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from config.fields import Seconds


class UsageSettings(BaseModel):
    flush_interval_s: Seconds = 5.0
    # Divides an hour: a bucket never straddles an hour, a day or a billing month.
    flush_bucket_s: int = Field(60, ge=1, le=3600)
    flush_grace_s: Seconds = 5.0
    # How often Redis's copy of the store's configuration and grants is checked and
    # repaired where an admin change reached the store but not Redis.
    projection_check_interval_s: Seconds = 60.0

    # Flush quarantine: a bucket the store rejects this many times in a row (bad data, not
    # an outage) goes to the dead-letter table, so one bucket never stalls the flusher.
    flush_quarantine_attempts: int = Field(3, ge=1, le=100)

    @field_validator("flush_bucket_s")
    @classmethod
    def _flush_bucket_s(cls, value: int) -> int:
        # Usage is stored by bucket start: a bucket straddling a boundary would put usage
        # in the hour (or month) before the one the licence counter counted it in.
        if 3600 % value:
            raise ValueError(
                f"{value} does not divide 3600 (an hour) evenly: use a divisor such as "
                "1, 5, 10, 15, 30, 60, 300, 600, 900 or 3600"
            )
        return value
