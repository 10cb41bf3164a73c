"""The store has one counter column per counted refusal, and migrations never drift."""

from __future__ import annotations

import re

from meter.store.models import REFUSAL_REASONS
from meter.store.schema import MIGRATIONS
from meter.store.schema_initial import MIGRATION_1_REFUSALS


def _refused_columns() -> set[str]:
    sql = "\n".join(step.sql for step in MIGRATIONS)
    return set(re.findall(r"\brefused_([a-z_]+)\s+BIGINT", sql))


def test_every_counted_refusal_has_a_column() -> None:
    missing = set(REFUSAL_REASONS) - _refused_columns()
    assert not missing, f"counted refusals without a column (add a migration): {missing}"


def test_migration_1_keeps_its_columns() -> None:
    # Migration 1 is applied on every deployed store: its text may never change.
    assert MIGRATION_1_REFUSALS[-1] == "other"
    assert set(MIGRATION_1_REFUSALS) <= _refused_columns()
