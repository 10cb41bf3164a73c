"""Plans and credits: the free credits and top-ups a workspace gets.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from config.fields import DAY, Micros, Seconds


class CreditsSettings(BaseModel):
    free_credits: Micros = Field("500.00", validate_default=True)
    free_credit_validity_s: Seconds = 90 * DAY
    low_balance_threshold: Micros = Field("50.00", validate_default=True)
    topup_min: Micros = Field("100.00", validate_default=True)
    topup_max: Micros = Field("20000.00", validate_default=True)
    deduction_order: Literal["free_first", "paid_first"] = "free_first"
