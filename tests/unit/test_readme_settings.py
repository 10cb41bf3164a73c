"""The README's configuration table names every setting, so none is undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _table_names() -> set[str]:
    """Setting names in the first cell of each README table row (``| `A` / `B` | ...``)."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    documented = _table_names()
    missing = [f.upper() for f in Settings.model_fields if f.upper() not in documented]
    assert missing == [], f"README configuration table lacks {missing}"
