"""The rolling rate windows as admit.lua stores them, counted on a real redis-server.

admit.lua writes a window back once per call: the current bucket's count (read with the
window, plus what the call added), the total ``t``, and ``o``/``n`` where they changed.
These tests drive many calls of several admissions across bucket and window boundaries
and compare every stored bucket with the admissions counted by hand, so a write that
loses a bucket's earlier count, a total that drifts from its buckets, or a newest index
left behind (which later drops live buckets) is caught.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.metering import admission

USD = 1_000_000
NB = 60  # buckets per window (admit.lua)
WINDOWS = ((60_000, 0), (3_600_000, 1))  # (window ms, index in keys.rate_keys)


async def _stored(client: RedisClient, key: str) -> tuple[dict[int, int], dict[str, int], int]:
    raw = {f.decode(): int(v) for f, v in (await client.hgetall(key)).items()}
    buckets = {int(f): v for f, v in raw.items() if f.isdigit()}
    meta = {f: v for f, v in raw.items() if not f.isdigit()}
    return buckets, meta, await client.pttl(key)


async def test_windows_count_every_admission_across_buckets_and_calls(
    rclient: RedisClient,
) -> None:
    clock, _, w, adm = await admission(
        rclient, free=1000 * USD, rate_per_minute=10**9, rate_per_hour=10**9
    )
    app, rng = w.apps[0], random.Random(7)
    admitted: list[int] = []  # ms stamp of each admitted message
    # Small steps (several calls per bucket), steps across buckets, and two jumps past a
    # whole window (the stored window restarts) and past part of one (old buckets trimmed).
    steps = [0.2] * 10 + [0.9] * 20 + [7.0] * 12 + [61.0] + [0.4] * 8 + [3700.0]
    for step, advance in enumerate(steps):
        clock.advance(advance)
        # A few admissions decided together (one script call), in open sessions and new.
        users = [f"u{rng.randrange(4)}" if rng.random() < 0.6 else f"n{step}x{j}" for j in range(3)]
        ds = await asyncio.gather(*(adm.admit(app, "web", u) for u in users))
        assert [d.reason for d in ds] == [None] * len(ds)
        admitted += [int(clock.now * 1000)] * len(ds)
        now_ms = int(clock.now * 1000)
        for win, i in WINDOWS:
            g = win / NB
            cur = int(now_ms // g)
            want = Counter(int(ms // g) for ms in admitted if ms // g >= cur - NB)
            buckets, meta, pttl = await _stored(rclient, keys.rate_keys(w.ws, app)[i])
            assert buckets == dict(want), f"window {win} ms after step {step}"
            assert meta["t"] == sum(want.values())
            assert meta["n"] == cur
            assert meta["o"] <= min(buckets)
            assert 0 < pttl <= g * (NB + 2)


async def test_a_limit_binds_at_its_value_within_one_call_and_across_calls(
    rclient: RedisClient,
) -> None:
    clock, _, w, adm = await admission(
        rclient, free=1000 * USD, rate_per_minute=7, rate_per_hour=10**9
    )
    app = w.apps[0]
    # Ten at once (one call): exactly seven pass.
    first = await asyncio.gather(*(adm.admit(app, "web", f"a{i}") for i in range(10)))
    assert sum(d.admitted for d in first) == 7
    # Within the same minute, in later calls and later buckets: nothing more passes.
    for i in range(5):
        clock.advance(5)
        assert (await adm.admit(app, "web", f"b{i}")).reason == "rate_limited"
    # Once the first bucket has left the window, exactly seven pass again, one per call
    # from the same user (the short path inside the session) and new users alike.
    clock.advance(60)
    passed = [(await adm.admit(app, "web", "a0" if i % 2 else f"c{i}")).admitted for i in range(9)]
    assert passed == [True] * 7 + [False] * 2
    buckets, meta, _ = await _stored(rclient, keys.rate_keys(w.ws, app)[0])
    assert meta["t"] == sum(buckets.values()) == 7
