"""Money at the edges: decimal strings <-> integer micro-dollars.

Inside creditgate every amount is an ``int`` of micro-dollars (1 USD = 1_000_000).
Only APIs and exports speak decimal strings such as ``"499.80"``.
"""

from __future__ import annotations

import re
from decimal import Decimal

MICROS_PER_DOLLAR = 1_000_000
# Plain decimal only: no exponent, no sign, no NaN/Infinity, at most 6 decimals.
_AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?$")


class InvalidAmount(ValueError):
    """A money string that is not a plain non-negative decimal with <= 6 decimals."""


def parse_amount(text: object, *, places: int = 6) -> int:
    """Parse ``"12.50"`` into micro-dollars; reject anything that is not plain decimal.

    ``places`` caps the decimals accepted: prices may use six, top-ups only cents (2).
    """
    if not isinstance(text, str) or not _AMOUNT.fullmatch(text):
        raise InvalidAmount(f"not a plain decimal amount: {text!r}")
    _, _, frac = text.partition(".")
    if len(frac) > places:
        raise InvalidAmount(f"at most {places} decimal places: {text!r}")
    return int(Decimal(text) * MICROS_PER_DOLLAR)


def format_amount(micros: int) -> str:
    """Format micro-dollars as a decimal string with at least two decimals (``"499.80"``)."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_DOLLAR)
    digits = f"{frac:06d}".rstrip("0")
    digits = digits.ljust(2, "0")
    return f"{sign}{whole}.{digits}"
