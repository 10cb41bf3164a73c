"""Store URLs and the export's timestamps, pure: nothing here connects to a server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meter.store import open_store
from meter.usage.export import export_time, parse_time


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/a/b.db")
    assert getattr(s, "path", None) == f"{tmp_path}/a/b.db"
    rel = open_store("sqlite:///creditgate.db")
    assert getattr(rel, "path", None) == "creditgate.db"
    assert open_store("postgresql://postgres@127.0.0.1:1/x").dialect == "postgresql"
    for bad in ("mysql://x", "sqlite://", "sqlite:///"):
        with pytest.raises(ValueError, match="or postgresql://"):  # says what works
            open_store(bad)


def test_iso_times() -> None:
    assert export_time(ms("2026-11-26T20:00:00")) == "2026-11-26T20:00:00Z"
    assert export_time(ms("2026-11-26T20:00:00") + 5) == "2026-11-26T20:00:00.005Z"
    assert parse_time("2026-11-26T21:00:00+01:00") == ms("2026-11-26T20:00:00")
