"""The host timer the metering clock (:mod:`meter.redis_layer.clock`) advances its
readings with between syncs to Redis's clock, and whose readings compare with whose.

:data:`TIMER` is ``CLOCK_BOOTTIME`` on Linux (``time.monotonic`` elsewhere): a step of
the local wall clock (NTP, an operator) changes no stamp, and unlike ``CLOCK_MONOTONIC``
it advances while the host (a VM) is suspended, so a resumed process does not stamp the
time it was suspended at until its next sync. :data:`TIMER_SOURCE` says whose readings
compare with this process's (every process of one boot and time namespace), so a
:class:`HostStamp` taken unsynced by another process can be moved to Redis's clock.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
from pathlib import Path
from typing import NamedTuple

from meter.timestamps import Clock


def _default_timer() -> Clock:
    """``CLOCK_BOOTTIME`` where there is one (Linux), else ``time.monotonic``."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return time.monotonic
    return functools.partial(time.clock_gettime, boottime)


TIMER = _default_timer()  # what readings advance with between syncs (see the module's doc)


def _timer_source() -> str:
    """Whose :data:`TIMER` readings compare with this process's: ``CLOCK_BOOTTIME`` is
    the kernel's, the same in every process of one boot (``boot_id``) and time namespace;
    elsewhere, this process's only."""
    own = "process:" + secrets.token_hex(8)
    if getattr(time, "CLOCK_BOOTTIME", None) is None:
        return own
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return own
    try:
        ns = os.readlink("/proc/self/ns/time")
    except OSError:
        ns = ""  # a kernel without time namespaces: one CLOCK_BOOTTIME
    return f"boottime:{boot}:{ns}" if boot else own


TIMER_SOURCE = _timer_source()


class HostStamp(NamedTuple):
    """What a reading taken before the clock's first sync (the wall clock's) was taken
    with, so it can be moved to Redis's clock later
    (:meth:`meter.redis_layer.clock.RedisClock.as_redis`)."""

    timer: float  # the clock's timer then
    source: str  # whose timer (:data:`TIMER_SOURCE`); "" unknown
