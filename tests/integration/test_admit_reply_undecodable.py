"""A reply to an admission call that does not decode answers every waiter of the call.

On the redis-py route (Redis Cluster, TLS, replicated durability) a reply that
``wire.resolve`` cannot read raised out of the batch's task, and the waiters after the
bad entry were never answered: their clients hung until they gave up. Each must hear
:class:`MeteringUnavailable` (ambiguous: the call ran), as on the piped route. The reply
here is a real one from a real Redis: a script in ``admit.lua``'s place whose reply is
not ``admit.lua``'s shape (one entry and a half of three fields each).
"""

from __future__ import annotations

import asyncio

import pytest

from config import load_settings
from meter.admission.calls import AdmitCalls
from meter.admission.decision import Decision
from meter.admission.ticket import Ticket, ticket
from meter.admission.wire import AdmitArgs, Pending
from meter.errors import MeteringUnavailable
from meter.redis_layer.client import RedisClient

NOW = 1_801_234_567.891
SHORT = "return {0, 'sid', 0, 1}"  # the first decision, then half of the second


def pending(ws: str, i: int) -> Pending:
    args = AdmitArgs(f"{ws}_app", "web", f"u{i}", "", f"t.{i}", "m")
    future: Ticket[Decision] = ticket(asyncio.get_running_loop())
    return Pending(args.encode(), args.key, args.token, f"rid{i}", future)


def assert_answered(chunk: list[Pending]) -> None:
    first, *rest = chunk
    assert first.future.result().bsid == "sid"  # decoded: its decision stands
    for p in rest:
        assert p.future.done(), "a waiter never answered"
        exc = p.future.exception()
        assert isinstance(exc, MeteringUnavailable), exc
        assert exc.ambiguous  # the call ran: a charge may stand (the sweeper settles it)


async def test_one_call_answers_each_waiter(client: RedisClient) -> None:
    calls = AdmitCalls(client, load_settings(env={}), None)
    calls._admit = client.register_script(SHORT)
    chunk = [pending("wsa", i) for i in range(3)]
    await asyncio.wait_for(calls.call(list(calls.head(NOW)), "wsa", chunk), 30)
    assert_answered(chunk)


@pytest.mark.parametrize("client", ["single"], indirect=True)
async def test_a_pipelined_batch_answers_each_waiter(client: RedisClient) -> None:
    calls = AdmitCalls(client, load_settings(env={}), None)
    calls._admit = client.register_script(SHORT)
    await calls._admit(keys=["{wsa}:x"], args=[])  # loaded: the pipeline sends EVALSHA
    batch = [("wsa", [pending("wsa", i) for i in range(3)]), ("wsb", [pending("wsb", 9)])]
    await asyncio.wait_for(calls._pipelined(list(calls.head(NOW)), batch), 30)
    assert_answered(batch[0][1])
    assert batch[1][1][0].future.result().bsid == "sid"
