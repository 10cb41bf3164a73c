"""A workspace's Redis projection ends as the store ends when two changes of the
workspace race: each change was projected from the workspace its route read plus its
own change, so the projection written last could carry the other change's older
values. The owner's low-balance threshold, read before the operator's upgrade and
projected after it, put the workspace back on the standard plan in Redis while the
store held it enterprise (traffic priced as standard, the licences' usage limits not
applied) until the projection check's next pass.

Real sockets, a real redis-server, SQLite and PostgreSQL stores. The race is forced, not
timed: the threshold's projection is held while the upgrade goes through, then let go.
"""

from __future__ import annotations

import asyncio

from meter.accounts import projection
from meter.redis_layer import keys
from tests.support.adminkit import Admin
from tests.support.held_call import held_call, started
from tests.support.settings import OPERATOR_TOKEN

LICENCE = {"usage_limit": 10, "per_minute": 5, "per_hour": 50}


async def test_a_threshold_projected_after_an_upgrade_keeps_the_upgrade(any_admin: Admin) -> None:
    a = any_admin
    owner, ws = await a.owner_workspace()
    async with held_call(projection, "put_workspace") as reached:
        patch = a.api("PATCH", f"/v1/workspaces/{ws}", owner, {"low_balance_threshold": "5.00"})
        task = asyncio.ensure_future(patch)
        await started(task, reached)  # stored; its projection held
        upgrade = {"licences": {"search": LICENCE}}
        await a.ok("POST", f"/v1/workspaces/{ws}/upgrade", OPERATOR_TOKEN, upgrade)
    status, body = await task
    assert status == 200, body
    stored = await a.store.get_workspace(ws)
    assert stored is not None
    assert (stored.type, stored.low_balance_threshold) == ("enterprise", 5_000_000)
    live = await a.redis.hgetall(keys.ws_key(ws))
    assert live[b"type"] == b"enterprise"
    assert live[b"lowt"] == b"5000000"
    assert live[b"l:search"] == b"10,5,50"
