"""Copies of the platform payload samples the product contract ships
(``tests/data/channels``); kept in the repo so the tests never depend on anything
outside it."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "channels"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()
