"""How the metering clock takes a new offset (meter/redis_layer/clock.py): forward at
once, a jitter step back held (readings never go back), a larger step back (Redis's own
clock stepped) followed. Measuring against Redis: tests/integration/test_redis_clock.py."""

from __future__ import annotations

import sys
import time

from meter.redis_layer.clock import MAX_BACK_S, RedisClock
from meter.redis_layer.timer import TIMER
from tests.support.clock import Clock


def clock_at(t: float) -> tuple[Clock, RedisClock]:
    timer = Clock(t)
    return timer, RedisClock(local=timer, timer=timer)


def test_before_any_sync_the_local_clock() -> None:
    _timer, clock = clock_at(1000.0)
    assert clock() == 1000.0
    assert not clock.synced


def test_a_forward_step_is_taken_at_once() -> None:
    _timer, clock = clock_at(1000.0)
    clock.follow(30.0)
    assert clock() == 1030.0
    assert clock.local_offset == 30.0


def test_a_jitter_step_back_holds_readings_until_the_timer_catches_up() -> None:
    timer, clock = clock_at(1000.0)
    clock.follow(10.0)
    assert clock() == 1010.0
    clock.follow(10.0 - MAX_BACK_S / 2)
    assert clock() == 1010.0  # held, not back
    timer.advance(MAX_BACK_S / 4)
    assert clock() == 1010.0
    timer.advance(MAX_BACK_S / 2)
    assert clock() == 1000.0 + MAX_BACK_S * 3 / 4 + 10.0 - MAX_BACK_S / 2
    assert clock() > 1010.0


def test_steps_back_held_in_a_row_never_hold_beyond_the_bound() -> None:
    """Two jitter steps back while held: the second is measured from the held reading,
    so readings are held at most MAX_BACK_S behind the timer in all."""
    _timer, clock = clock_at(1000.0)
    clock.follow(0.0)
    clock.follow(-MAX_BACK_S * 0.6)
    assert clock() == 1000.0
    clock.follow(-MAX_BACK_S * 1.2)  # 1.2 x the bound behind the held reading: followed
    assert clock() == 1000.0 - MAX_BACK_S * 1.2


def test_a_large_step_back_is_followed() -> None:
    """Redis's clock itself stepped back (a failover to a node behind): every process
    follows it; holding would freeze every window and session of this one for the step."""
    timer, clock = clock_at(1000.0)
    clock.follow(0.0)
    clock.follow(-300.0)
    assert clock() == 700.0
    timer.advance(1)
    assert clock() == 701.0


def test_the_timer_advances_during_a_suspend_on_linux() -> None:
    """``CLOCK_BOOTTIME`` (counts a VM's suspend; ``time.monotonic`` does not), and it is
    the default timer: a resumed process does not stamp the moment it was suspended."""
    if sys.platform == "linux":
        assert TIMER() <= time.clock_gettime(time.CLOCK_BOOTTIME)
        assert getattr(TIMER, "args", None) == (time.CLOCK_BOOTTIME,)
    else:
        assert TIMER is time.monotonic
    assert RedisClock()._timer is TIMER


def test_an_unsynced_reading_is_moved_by_its_timer_not_the_wall_clock_now() -> None:
    """A reading taken before the first sync, on a host 2 h ahead then stepped right
    (NTP) before the sync: Redis's clock then is the timer reading plus the offset
    measured, whatever the wall clock did; a stamp of another timer (a dead process of
    another boot) falls back to the wall clock's offset measured now."""
    timer = Clock(1000.0)
    wall = Clock(1000.0 + 7200)
    clock = RedisClock(local=wall, timer=timer)
    at, stamp = clock(), clock.host_stamp()
    assert stamp is not None
    assert at == 8200.0
    timer.advance(10)
    wall.now = timer.now  # stepped right
    clock.follow(0.0)  # Redis's clock is the timer
    assert clock.host_stamp() is None
    assert clock.as_redis(at, stamp) == 1000.0
    assert clock.as_redis(at, stamp._replace(source="boottime:another-boot:")) == at
    assert clock.as_redis(at, stamp._replace(source="")) == at
