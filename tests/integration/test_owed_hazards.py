"""Fail-open debts and voids (gateway/owed.py) at their edges: a damaged journal taken
over, a full void list, a debt forgiven before its turn in a settlement pass.

Counted on a real redis-server: every served message charged exactly once, one whose
bot failed not at all (or its charge voided).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from gateway.owed import Owed
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import seed
from tests.support.settings import make_settings

PRICE = 10_000  # contact_center: a request unit
POOL = 1_000_000

# A dead process's journal line of the right shape with a field of the wrong type
# ("APP": the app id, "AT": the clock's now): each, settled, raised out of the pass.
DAMAGED = [
    'D ["APP", 1, "u", "", "bad", "m", AT]',  # TypeError (channel)
    'D ["APP", "web", "u", 7, "bad", "m", AT]',  # TypeError (key)
    'D ["APP", "web", "u", "", "bad", "m", "AT"]',  # ValueError (at)
    "V [1, 2, 3]",  # TypeError (app id)
    'V ["APP", ["t:bad"], "bad"]',  # DataError: "redis unavailable" for good
]


@pytest.mark.parametrize("line", DAMAGED)
async def test_a_damaged_journal_line_does_not_stop_the_settling(
    rclient: RedisClient, redis_url: str, tmp_path: Path, line: str
) -> None:
    """A journal taken over lists, ahead of a good debt, a debt or void with a field of
    the wrong type (damaged, or another version's). Before: settling it raised a
    TypeError or ValueError out of the pass, which ended the settling task for the life
    of the process (or, for a void whose record id is a list, a DataError taken for
    Redis being away: every pass failed there, for good): the good debt and every one
    owed after it served free. Now the line is skipped as malformed, the rest settled."""
    clock, cfg = Clock(), make_settings(redis_url, tmp_path, fail_mode="open")
    w = await seed(rclient, cfg, clock, pool=POOL, products=("contact_center",))
    app = w.apps[0]
    state = tmp_path / "st"
    state.mkdir()
    good = f'D ["{app}", "web", "good", "", "tok1", "m", {clock.now}]'
    damaged = line.replace("APP", app).replace("AT", str(clock.now))
    (state / "owed-1-dead.log").write_text(f"{damaged}\n{good}\n")
    adm = Admitter(rclient, cfg, clock=clock)
    owed = Owed(adm, Metrics(CollectorRegistry()), timeout=30.0, state_dir=state)
    try:
        owed.recover()
        assert await owed.settle()
        assert not owed
        assert (await projection.read_balances(rclient, w.ws)).pool == POOL - PRICE
    finally:
        await owed.close(0)
        await adm.close()
