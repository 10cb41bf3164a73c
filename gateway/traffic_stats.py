"""Counters of one traffic process that are not Prometheus metrics (which server
answered: tests read them to prove a path was taken), and the timing of garbage
collections (:func:`time_gc`, exported as ``creditgate_gc_seconds_total``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class TrafficStats:
    fast: int = 0  # requests the fast path answered itself
    handed_off: int = 0  # connections handed to the aiohttp application


def time_gc(record: Callable[[float], None]) -> None:
    """Tell ``record`` the duration of every collection of this process from now on."""
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            record(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
