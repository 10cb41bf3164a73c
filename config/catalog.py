"""The price catalog: for each plan and product, the billable unit and its price."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from config.money import InvalidAmount, parse_amount

Plan = Literal["standard", "enterprise"]
Unit = Literal["session", "request", "notification"]
PLANS: tuple[Plan, ...] = ("standard", "enterprise")
PRODUCTS: tuple[str, ...] = ("automation", "search", "contact_center", "agent")
UNITS: tuple[Unit, ...] = ("session", "request", "notification")


@dataclass(frozen=True, slots=True)
class Price:
    """One catalog entry: what is billed and how much (micro-dollars)."""

    unit: Unit
    price: int


class CatalogError(ValueError):
    """The catalog file is malformed."""


@dataclass(frozen=True, slots=True)
class Catalog:
    """Prices keyed by ``(plan, product)``; ``product`` may be ``notification``."""

    prices: dict[tuple[str, str], Price]

    def price(self, plan: str, product: str) -> Price:
        return self.prices[(plan, product)]


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog from ``path`` or the one shipped with the package."""
    if path is None:
        text = resources.files("config").joinpath("catalog.yaml").read_text()
    else:
        text = Path(path).read_text()
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise CatalogError("catalog must be a mapping of plan -> product -> {unit, price}")
    prices: dict[tuple[str, str], Price] = {}
    for plan in PLANS:
        entries = raw.get(plan)
        if not isinstance(entries, dict):
            raise CatalogError(f"catalog: missing plan {plan!r}")
        for product in (*PRODUCTS, "notification"):
            entry = entries.get(product)
            if not isinstance(entry, dict) or entry.get("unit") not in UNITS:
                raise CatalogError(f"catalog: {plan}.{product} needs a unit in {UNITS}")
            try:
                micros = parse_amount(str(entry.get("price")))
            except InvalidAmount as exc:
                raise CatalogError(f"catalog: {plan}.{product}.price: {exc}") from None
            if micros <= 0:
                raise CatalogError(f"catalog: {plan}.{product}.price must be positive")
            prices[(plan, product)] = Price(unit=entry["unit"], price=micros)
    return Catalog(prices=prices)
