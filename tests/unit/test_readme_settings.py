"""The README's configuration table names every setting, so none is undocumented, and
only settings, each with the default it has."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

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


def _table_rows() -> list[tuple[list[str], list[str]]]:
    """The configuration table's rows: their setting names and default cells, split at
    `` / `` (a row of several settings gives their defaults in the same order)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| setting | default | meaning |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = line.split("|")
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[1])
        rows.append((names, [d.strip() for d in cells[2].split(" / ")]))
    return rows


def test_every_name_in_the_table_is_a_setting_with_the_default_it_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each default written as one literal (`` `900` ``, `` `500.00` ``, `` `true` ``, maybe
    followed by a note in brackets), read as the setting reads its value, is the default;
    prose defaults ("90 days", "built-ins") are left to the reader."""
    for name in [k for k in os.environ if k.startswith("CREDITGATE_")]:
        monkeypatch.delenv(name)  # the defaults, not this machine's settings
    fields = Settings.model_fields
    unknown, wrong, checked = [], [], 0
    for names, defaults in _table_rows():
        unknown += [n for n in names if n.lower() not in fields]
        if len(names) != len(defaults):
            continue
        for name, cell in zip(names, defaults, strict=True):
            literal = re.fullmatch(r"`([^`]*)`(?: \(.*\))?", cell)
            if literal is None or name.lower() not in fields:
                continue
            field = name.lower()
            stated = getattr(Settings(**{field: literal.group(1)}), field)
            if stated != getattr(Settings(), field):
                wrong.append(f"{name}: README says {literal.group(1)}")
            checked += 1
    assert unknown == [], f"README configuration table names no such setting: {unknown}"
    assert wrong == [], f"README configuration table states another default: {wrong}"
    assert checked >= 80  # the table's literal defaults were found and read
