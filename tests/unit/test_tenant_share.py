"""gateway/tenant_share.py on its own: who gets a place of a tenant's share, in which
order, and what a waiter that gives up gives back (the servers' tests:
tests/system/test_tenant_share.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.tenant_share import Shares, Ticket, Wait

X, Y, Z = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)  # three bots


class Waits:
    """Records every wait as it starts (to end it from outside, as a server does)."""

    def __init__(self) -> None:
        self.started: list[Wait] = []

    def __call__(self, wait: Wait) -> Callable[[], None]:
        self.started.append(wait)
        return lambda: None


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def enter(shares: Shares, waits: Waits, tenant: str, key: object) -> asyncio.Task[Ticket]:
    return asyncio.create_task(shares.enter(tenant, key, waits))


async def test_a_tenant_waits_past_its_share_and_no_one_else_does() -> None:
    shares, waits = Shares(per_bot=2, total=3), Waits()
    x1, x2 = [await shares.enter("t", X, waits) for _ in range(2)]
    over = enter(shares, waits, "t", X)  # past its share at X
    y1 = await shares.enter("t", Y, waits)  # X's share blocks nothing at Y
    other = [await shares.enter("u", X, waits) for _ in range(2)]  # nor another tenant
    await settle()
    assert not over.done()
    assert (shares.held("t"), shares.held("u"), len(waits.started)) == (3, 2, 1)
    x1.free()
    x1.free()  # idempotent
    assert (await over).key == X
    assert shares.held("t") == 3
    for ticket in (x2, y1, await over, *other):
        ticket.free()
    assert (shares.held("t"), shares.held("u")) == (0, 0)
    assert not shares._tenants  # nothing kept for tenants holding nothing


async def test_places_go_in_arrival_order_whichever_share_held_them_back() -> None:
    shares, waits = Shares(per_bot=2, total=3), Waits()
    x1, _ = [await shares.enter("t", X, waits) for _ in range(2)]
    y1 = await shares.enter("t", Y, waits)  # all of t's share in all
    w1 = enter(shares, waits, "t", X)  # held back by its share at X
    await settle()
    w2 = enter(shares, waits, "t", Y)  # by its share in all
    await settle()
    w3 = enter(shares, waits, "t", Z)
    await settle()
    y1.free()  # a place in all (at Y): the longest waiter that may take it is w2
    await settle()
    assert (w1.done(), w2.done(), w3.done()) == (False, True, False)
    x1.free()  # a place at X and one in all: w1 came first
    await settle()
    assert (w1.done(), w3.done()) == (True, False)
    (await w2).free()
    assert (await w3).key == Z


async def test_a_waiter_that_gives_up_gives_back_what_it_held() -> None:
    shares, waits = Shares(per_bot=1, total=2), Waits()
    x1 = await shares.enter("t", X, waits)
    y1 = await shares.enter("t", Y, waits)
    at_x = enter(shares, waits, "t", X)  # queued at X
    await settle()
    at_z = enter(shares, waits, "t", Z)  # has its place at Z, waits for one in all
    await settle()
    later_z = enter(shares, waits, "t", Z)  # queued at Z behind it
    await settle()
    waits.started[1].set_exception(TimeoutError())  # at_z's connect deadline
    with pytest.raises(TimeoutError):
        await at_z
    y1.free()
    await settle()
    assert (at_x.done(), later_z.done()) == (False, True)  # at_z's place at Z went on
    x1.free()
    (await later_z).free()
    (await at_x).free()
    assert shares.held("t") == 0
    assert not shares._tenants


async def test_a_place_handed_to_a_waiter_that_left_in_the_same_pass_is_passed_on() -> None:
    shares, waits = Shares(per_bot=1, total=1), Waits()
    first = await shares.enter("t", X, waits)
    leaving = enter(shares, waits, "t", X)
    await settle()
    nxt = enter(shares, waits, "t", X)
    await settle()
    first.free()  # handed to ``leaving`` ...
    leaving.cancel()  # ... cancelled before it ran (aiohttp's connect timeout)
    with pytest.raises(asyncio.CancelledError):
        await leaving
    (await nxt).free()
    assert shares.held("t") == 0


async def test_stopping_refuses_every_waiter_and_anyone_who_would_wait() -> None:
    shares, waits = Shares(per_bot=1, total=2), Waits()
    x1 = await shares.enter("t", X, waits)
    queued = [enter(shares, waits, "t", X) for _ in range(3)]
    await settle()
    shares.refuse(lambda: ConnectionError("stopping"))
    for task in queued:
        with pytest.raises(ConnectionError):
            await task
    with pytest.raises(ConnectionError):
        await shares.enter("t", X, waits)  # would wait: refused at once
    (await shares.enter("t", Y, waits)).free()  # room: a place as before
    x1.free()
    assert shares.held("t") == 0
    assert not shares._tenants


async def test_most_waiters_giving_up_are_dropped_and_the_rest_keep_their_turn() -> None:
    shares, waits = Shares(per_bot=1, total=1), Waits()
    first = await shares.enter("t", X, waits)
    queued = [enter(shares, waits, "t", X if i % 2 else Y) for i in range(60)]
    await settle()
    for i, wait in enumerate(waits.started):
        if i % 3:
            wait.set_exception(TimeoutError())
    await settle()
    tenant = shares._tenants["t"]
    assert tenant.size < 60  # those that gave up were dropped, not kept to the end
    first.free()
    order = []
    for i, task in enumerate(queued):
        if i % 3:
            with pytest.raises(TimeoutError):
                await task
        else:
            ticket = await task
            order.append(i)
            ticket.free()
    assert order == list(range(0, 60, 3))
    assert not shares._tenants


async def test_waits_are_counted() -> None:
    counted: list[int] = []
    shares = Shares(per_bot=1, total=1, waited=lambda: counted.append(1))
    first = await shares.enter("t", X, Waits())
    over = enter(shares, Waits(), "t", X)
    await settle()
    first.free()
    (await over).free()
    assert counted == [1]


async def test_take_gives_a_place_only_while_the_share_has_room_and_never_jumps_a_waiter() -> None:
    shares, waits = Shares(per_bot=1, total=5), Waits()
    first = shares.take("t", X)
    assert first is not None
    assert shares.take("t", X) is None  # X's share is full: the caller must wait
    assert shares.held("t") == 1
    waiter = enter(shares, waits, "t", X)
    await settle()
    first.free()  # the place goes to the waiter, not to a later take()
    assert shares.take("t", X) is None
    (await waiter).free()
    again = shares.take("t", X)
    assert again is not None
    again.free()
    assert shares.held("t") == 0
    assert not shares._tenants  # nothing kept for a tenant that holds nothing
    no_room = Shares(per_bot=0, total=5)
    assert no_room.take("t", X) is None
    assert not no_room._tenants
