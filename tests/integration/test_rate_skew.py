"""Rolling rate windows shared by gateway replicas whose clocks disagree (admit.lua,
window() in admit_batch.lua): a window never goes backwards. A replica behind the
window's newest bucket counts into it; one ahead drops only what is older than its window.
Real Redis; each replica is an Admitter with its own clock."""

from __future__ import annotations

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import admission, admitter

USD = 1_000_000
NB = 60  # buckets per window (admit.lua)
G_MS = 60_000 // NB  # the minute window's bucket


async def minute_window(client: RedisClient, ws: str, app: str) -> dict[str, int]:
    raw = await client.hgetall(keys.rate_keys(ws, app)[0])
    return {f.decode(): int(v) for f, v in raw.items()}


async def test_a_replica_70_s_behind_does_not_switch_the_minute_limit_off(
    rclient: RedisClient,
) -> None:
    """Interleaved, one replica 70 s behind the other: the per-minute limit of 5 binds
    (before, each write moved the newest bucket to its writer's clock and the replica
    ahead then found the whole window old and dropped it: all 20 went through)."""
    clock, cfg, w, _ = await admission(
        rclient, free=100 * USD, rate_per_minute=5, rate_per_hour=1000
    )
    behind = Clock(clock.now - 70)
    ahead_adm, behind_adm = admitter(rclient, cfg, clock), admitter(rclient, cfg, behind)
    app, ok = w.apps[0], 0
    for i in range(20):
        d = await (ahead_adm if i % 2 else behind_adm).admit(app, "web", f"u{i % 3}")
        ok += d.admitted
        clock.advance(0.5)
        behind.advance(0.5)
    # The replica behind wrote first, at its own time: 70 s before the other's window,
    # so the replica ahead drops that one message; then the window holds 5.
    assert ok == 6
    win = await minute_window(rclient, w.ws, app)
    assert win["n"] * G_MS <= int(clock.now * 1000)
    assert win["t"] == sum(v for f, v in win.items() if f.isdigit()) == 5


async def test_a_replica_behind_counts_into_the_newest_bucket(rclient: RedisClient) -> None:
    clock, cfg, w, _ = await admission(
        rclient, free=100 * USD, rate_per_minute=5, rate_per_hour=1000
    )
    behind = Clock(clock.now - 30)
    ahead_adm, behind_adm = admitter(rclient, cfg, clock), admitter(rclient, cfg, behind)
    app = w.apps[0]
    assert (await ahead_adm.admit(app, "web", "a")).admitted
    newest = int(clock.now * 1000) // G_MS
    for i in range(4):
        assert (await behind_adm.admit(app, "web", f"b{i}")).admitted
    assert (await behind_adm.admit(app, "web", "b9")).reason == "rate_limited"
    win = await minute_window(rclient, w.ws, app)
    assert win["n"] == newest  # never moved back to the replica behind
    assert {f: v for f, v in win.items() if f.isdigit()} == {str(newest): 5}
    assert win["t"] == 5


async def test_a_replica_ahead_keeps_what_is_inside_its_window(rclient: RedisClient) -> None:
    """A replica 30 s ahead of the one that wrote the window keeps those counts (they are
    inside its minute); 61 s on by its clock they are old and dropped, not before."""
    clock, cfg, w, _ = await admission(
        rclient, free=100 * USD, rate_per_minute=5, rate_per_hour=1000
    )
    ahead = Clock(clock.now + 30)
    first_adm, ahead_adm = admitter(rclient, cfg, clock), admitter(rclient, cfg, ahead)
    app = w.apps[0]
    for i in range(3):
        assert (await first_adm.admit(app, "web", f"a{i}")).admitted
    for i in range(2):
        assert (await ahead_adm.admit(app, "web", f"b{i}")).admitted
    assert (await ahead_adm.admit(app, "web", "b9")).reason == "rate_limited"
    assert (await first_adm.admit(app, "web", "a9")).reason == "rate_limited"
    ahead.advance(31)  # the first three are 61 s old by this clock: out of its window
    assert (await ahead_adm.admit(app, "web", "c")).admitted
    win = await minute_window(rclient, w.ws, app)
    assert win["t"] == sum(v for f, v in win.items() if f.isdigit()) == 3


async def test_the_wait_of_a_replica_behind_is_at_most_the_window(rclient: RedisClient) -> None:
    """Per minute: a replica 10 min behind the one that wrote the newest bucket was told
    to wait its skew on top of the window (661 s); the wait is capped at the window plus
    a bucket, the most a replica on time is told."""
    clock, cfg, w, _ = await admission(
        rclient, free=100 * USD, rate_per_minute=2, rate_per_hour=1000
    )
    ahead = Clock(clock.now + 600)
    a, b = admitter(rclient, cfg, ahead), admitter(rclient, cfg, clock)
    app = w.apps[0]
    assert (await a.admit(app, "web", "x")).admitted
    assert (await b.admit(app, "web", "y")).admitted
    d = await b.admit(app, "web", "z")
    assert d.reason == "rate_limited"
    assert 0 < d.retry_after_ms <= 60_000 + G_MS
    # On time: the same wait as before the cap, a window and less than a bucket.
    on_time = await a.admit(app, "web", "z")
    assert on_time.reason == "rate_limited"
    assert 60_000 < on_time.retry_after_ms <= 60_000 + G_MS


async def test_the_hour_wait_of_a_replica_behind_is_at_most_the_hour(
    rclient: RedisClient,
) -> None:
    """Per hour: 30 min behind, the wait was 91 min; it is at most the hour plus a bucket."""
    clock, cfg, w, _ = await admission(
        rclient, free=100 * USD, rate_per_minute=1000, rate_per_hour=2
    )
    ahead = Clock(clock.now + 1800)
    a, b = admitter(rclient, cfg, ahead), admitter(rclient, cfg, clock)
    app = w.apps[0]
    assert (await a.admit(app, "web", "x")).admitted
    assert (await b.admit(app, "web", "y")).admitted
    d = await b.admit(app, "web", "z")
    assert d.reason == "rate_limited"
    assert 0 < d.retry_after_ms <= 3_600_000 + 60_000
