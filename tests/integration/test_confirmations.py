"""Forward confirmations (meter/admission/reservations.py) on a real Redis: every charged
message confirmed reaches ``P:rsv`` exactly once, through failures and a close, so the
sweeper refunds only what was never forwarded."""

from __future__ import annotations

from pathlib import Path

import pytest

from meter.accounts.seeding import seed
from meter.admission.reservations import Confirmations, replay
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import eventually
from tests.support.metering import admitter as make_admitter
from tests.support.settings import make_settings

WS = "confirm"
APP = f"{WS}_app1"
FREE = 10**12


async def reserved(rclient: RedisClient) -> set[str]:
    return {m.decode() for m in await rclient.zrange(keys.reservations_key(WS), 0, -1)}


async def test_confirmations_reach_redis_and_a_failed_batch_is_sent_again(
    redis_url: str, tmp_path: Path, rclient: RedisClient, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_url, tmp_path)
    await seed(rclient, settings, WS, {APP: {"product": "automation"}}, free=FREE)
    adm = make_admitter(rclient, settings)
    rids = [(await adm.admit(APP, "web", f"u{i}", "")).rid for i in range(40)]
    assert len(await reserved(rclient)) == 40
    confirmations = Confirmations(rclient, tmp_path / "state", timeout=5.0)
    for rid in rids[:20]:
        confirmations.forwarded(APP, rid)
    assert await eventually(lambda: confirmations.idle)
    assert await reserved(rclient) == {f"{APP}:{rid}" for rid in rids[20:]}

    # Redis refuses the next ZREM (the key holds the wrong type): the batch must stay
    # pending and go again, not be dropped (a dropped one is refunded by the sweeper).
    saved = await rclient.zrange(keys.reservations_key(WS), 0, -1, withscores=True)
    await rclient.delete(keys.reservations_key(WS))
    await rclient.set(keys.reservations_key(WS), "not a sorted set")
    for rid in rids[20:30]:
        confirmations.forwarded(APP, rid)
    assert await eventually(lambda: "confirmations deferred" in caplog.text)
    assert not confirmations.idle
    await rclient.delete(keys.reservations_key(WS))
    await rclient.zadd(keys.reservations_key(WS), dict(saved))
    assert await eventually(lambda: confirmations.idle)
    assert await reserved(rclient) == {f"{APP}:{rid}" for rid in rids[30:]}

    await confirmations.close()
    assert not confirmations.path.exists()  # all of it reached Redis


async def test_a_close_that_cannot_reach_redis_keeps_the_journal_for_the_next_start(
    redis_url: str, tmp_path: Path, rclient: RedisClient
) -> None:
    settings = make_settings(redis_url, tmp_path)
    await seed(rclient, settings, WS, {APP: {"product": "automation"}}, free=FREE)
    adm = make_admitter(rclient, settings)
    rids = [(await adm.admit(APP, "web", f"v{i}", "")).rid for i in range(5)]
    state = tmp_path / "state"
    confirmations = Confirmations(rclient, state, timeout=5.0)
    saved = await rclient.zrange(keys.reservations_key(WS), 0, -1, withscores=True)
    await rclient.delete(keys.reservations_key(WS))
    await rclient.set(keys.reservations_key(WS), "not a sorted set")
    for rid in rids:
        confirmations.forwarded(APP, rid)
    await confirmations.close(grace_s=0.2)
    assert not confirmations.idle
    assert confirmations.path.exists()
    # The next process replays the journal once Redis takes it.
    await rclient.delete(keys.reservations_key(WS))
    await rclient.zadd(keys.reservations_key(WS), dict(saved))
    assert await replay(rclient, state) == 5
    assert await reserved(rclient) == set()
    assert list(state.iterdir()) == []
