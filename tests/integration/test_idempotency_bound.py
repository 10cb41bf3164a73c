"""What an idempotency key costs Redis, and how many of them one app can make it hold.

A keyed message inside a paid billing session costs its tenant nothing, yet leaves a
record for the idempotency window, and anyone may send such messages on an
unauthenticated channel; Redis runs without eviction, so records that grow without bound
would stop every tenant's admissions. A record is small whatever its user and key
(a long record id is named by its digest, and a record keeps only what a refund reads),
and an app's free keyed records kept the whole window are counted: past
IDEMPOTENCY_MAX_FREE_KEYS_PER_APP (or IDEMPOTENCY_MAX_FREE_KEYS_PER_WORKSPACE across its
apps) one lives only the refund window. Real Redis, single and Cluster."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from config import Settings
from meter.admission.admitter import Admitter
from meter.admission.wire import AdmitHead
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.clock import Clock
from tests.support.metering import Workspace, admission, admitter, agg_totals, seed
from tests.support.settings import make_settings

USD = 1_000_000
FREE = 10 * USD
PRICE = 200_000  # a standard session
LONG_USER, LONG_KEY = "u" * 255, "k" * 255  # with a suffix: the 256 characters allowed
DAY_MS = 86_400_000


def hashed_key(ws: str, app: str, rid: str) -> str:
    """Where a record of a long id lives (meter/lua/lib_records.lua), spelt out here."""
    return f"{keys.ws_prefix(ws)}:i:{app}:h:{hashlib.sha1(rid.encode()).hexdigest()}"


async def two_apps(
    client: RedisClient, products: tuple[str, str], **settings: Any
) -> tuple[Settings, Workspace, Admitter]:
    """A new workspace with free credit and an app for each of ``products``."""
    clock, cfg = Clock(), make_settings(**settings)
    w = await seed(client, cfg, clock, free=FREE, products=products)
    return cfg, w, admitter(client, cfg, clock)


def refund_ttl_ms(cfg: Settings) -> int:
    return AdmitHead.of(cfg, 0).refund_ttl_ms  # the life of a record without a key


async def test_a_record_is_small_whatever_its_user_and_key(client: RedisClient) -> None:
    """256-character user and key: the record of a free keyed message (inside a paid
    session) and of a charge outside a session stay under 256 bytes (were ~1,000)."""
    _, w, adm = await two_apps(client, ("automation", "contact_center"))
    session_app, request_app = w.apps
    user = LONG_USER + "1"
    opened = await adm.admit(session_app, "web", user, LONG_KEY + "a", digest="0123abcd")
    inside = await adm.admit(session_app, "web", user, LONG_KEY + "b", digest="0123abcd")
    charge = await adm.admit(request_app, "web", user, LONG_KEY + "c", digest="0123abcd")
    assert (opened.units, inside.units, inside.duplicate, charge.units) == (1, 0, False, 1)
    for app, d in ((session_app, inside), (request_app, charge)):
        ik = keys.idem_key(w.ws, app, d.rid)
        used = await client.memory_usage(ik, samples=0)
        assert used is not None
        assert used <= 256, (d, used)
        assert ik == hashed_key(w.ws, app, d.rid)
        assert (await client.get(ik) or b"").split(b"\t", 1)[0] == d.token.encode()


async def test_free_keyed_records_past_the_cap_live_the_refund_window_only(
    client: RedisClient,
) -> None:
    """Past the cap an app's free keyed records live the refund window (a redelivery
    within it is still one); its charges and another app's records are untouched."""
    cfg, w, adm = await two_apps(
        client, ("automation", "automation"), idempotency_max_free_keys_per_app=3
    )
    busy, quiet = w.apps
    short = refund_ttl_ms(cfg)
    await adm.admit(busy, "web", "u", "open", digest="aa")  # opens and pays the session
    inside = [await adm.admit(busy, "web", "u", f"k{i}", digest="aa") for i in range(6)]
    assert all(d.admitted and d.units == 0 and not d.duplicate for d in inside)
    ttls = [await client.pttl(keys.idem_key(w.ws, busy, d.rid)) for d in inside]
    assert all(t > short for t in ttls[:3]), ttls  # the whole window
    assert all(0 < t <= short for t in ttls[3:]), ttls  # the refund window
    assert int(await client.get(keys.free_keys_key(w.ws, busy)) or 0) == 3
    assert 0 < await client.pttl(keys.free_keys_key(w.ws, busy)) <= DAY_MS

    # A redelivery within the short life is still a redelivery, charged nothing; a digest
    # of another message under its key is refused (code 8).
    again = await adm.admit(busy, "web", "u", "k5", digest="aa")
    assert (again.admitted, again.duplicate, again.units) == (True, True, 0)
    assert (await adm.admit(busy, "web", "u", "k5", digest="bb")).code == 8
    # A charge is paid for: its record keeps the whole window, past the cap too.
    paid = await adm.admit(busy, "web", "v", "k0", digest="aa")
    assert paid.units == 1
    assert await client.pttl(keys.idem_key(w.ws, busy, paid.rid)) > short
    # Another app of the same workspace keeps its own count.
    await adm.admit(quiet, "web", "u", "open", digest="aa")
    other = await adm.admit(quiet, "web", "u", "k0", digest="aa")
    assert await client.pttl(keys.idem_key(w.ws, quiet, other.rid)) > short
    assert int(await client.get(keys.free_keys_key(w.ws, quiet)) or 0) == 1


async def test_a_workspace_bounds_its_apps_free_keyed_records_together(
    client: RedisClient,
) -> None:
    """A tenant holds many apps: past IDEMPOTENCY_MAX_FREE_KEYS_PER_WORKSPACE free keyed
    records across its apps, each app's next one lives the refund window, though every
    app is under its own cap; in one call as across calls."""
    cfg, w, adm = await two_apps(
        client,
        ("automation", "automation"),
        idempotency_max_free_keys_per_app=10,
        idempotency_max_free_keys_per_workspace=5,
    )
    first, second = w.apps
    short = refund_ttl_ms(cfg)
    for app in w.apps:
        await adm.admit(app, "web", "u", "open", digest="aa")  # opens and pays the session
    kept = [await adm.admit(first, "web", "u", f"k{i}", digest="aa") for i in range(3)]
    # The rest in one batch (one admit.lua call) from both apps.
    batch = await asyncio.gather(
        *(adm.admit(app, "web", "u", f"b{i}", digest="aa") for i in range(3) for app in w.apps)
    )
    decided = [*((first, d) for d in kept), *zip([first, second] * 3, batch, strict=True)]
    assert all(d.admitted and d.units == 0 and not d.duplicate for _, d in decided)
    ttls = [await client.pttl(keys.idem_key(w.ws, app, d.rid)) for app, d in decided]
    assert sum(t > short for t in ttls) == 5, ttls  # the workspace's five (the opens paid)
    assert all(t > 0 for t in ttls), ttls  # each record is there, with a life
    assert sum(0 < t <= short for t in ttls) == len(decided) - 5, ttls
    assert int(await client.get(keys.free_keys_ws_key(w.ws)) or 0) == 5
    assert 0 < await client.pttl(keys.free_keys_ws_key(w.ws)) <= DAY_MS
    # Each app's own count stays within its cap of 10 and counts what it kept.
    own = [int(await client.get(keys.free_keys_key(w.ws, app)) or 0) for app in w.apps]
    assert sum(own) == 5, own


async def test_redeliveries_and_refunds_of_a_long_key_stay_exact(client: RedisClient) -> None:
    """A record named by its digest: redeliveries counted, the 5-delivery bound, the
    digest check, and the refund once every delivery failed, as for a short key."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    user = LONG_USER + "2"
    ds = [await adm.admit(app, "web", user, LONG_KEY + "x", digest="abcd") for _ in range(5)]
    assert (ds[0].units, [d.duplicate for d in ds[1:]]) == (1, [True] * 4)
    assert await client.exists(hashed_key(w.ws, app, ds[0].rid)) == 1
    assert (await adm.admit(app, "web", user, LONG_KEY + "x", digest="abcd")).code == 8
    assert (await adm.admit(app, "web", user, LONG_KEY + "x", digest="dcba")).code == 8
    for d in ds[:-1]:
        assert not await adm.refund(app, d)
    assert await adm.refund(app, ds[-1])
    assert not await adm.refund(app, ds[-1])
    totals = await agg_totals(client, w.ws)
    assert (totals["n"], totals["f"], totals["x"]) == (0, 0, 1)
    assert await client.exists(hashed_key(w.ws, app, ds[0].rid)) == 0


async def as_written_before(client: RedisClient, ws: str, app: str, rid: str) -> None:
    """Move a record to where earlier versions named it: its full id."""
    new, old = keys.idem_key(ws, app, rid), keys.legacy_idem_key(ws, app, rid)
    assert new != old
    await client.rename(new, old)


async def test_records_an_earlier_version_wrote_are_still_understood(
    client: RedisClient,
) -> None:
    """Rolling upgrade: a record of a long id under its full id (as earlier versions named
    it) is found by a redelivery, counted in place, refunded, and swept."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    user = LONG_USER + "3"
    first = await adm.admit(app, "web", user, LONG_KEY + "1", digest="abcd")
    await as_written_before(client, w.ws, app, first.rid)
    dup = await adm.admit(app, "web", user, LONG_KEY + "1", digest="abcd")
    assert (dup.admitted, dup.duplicate, dup.units) == (True, True, 0)
    assert await client.exists(keys.idem_key(w.ws, app, first.rid)) == 0  # updated in place
    assert not await adm.refund(app, first)  # the redelivery may still be served
    assert await adm.refund(app, dup)
    assert await client.exists(keys.legacy_idem_key(w.ws, app, first.rid)) == 0

    # The sweeper refunds an unconfirmed charge from such a record: its reservation
    # member "<app>:<rid>" is the same in both versions, and it voids that rid with no
    # token (meter/admission/reservations.py).
    lost = await adm.admit(app, "web", LONG_USER + "4", LONG_KEY + "3", digest="abcd")
    assert lost.units == 1
    await as_written_before(client, w.ws, app, lost.rid)
    member = f"{app}:{lost.rid}"
    assert await client.zscore(keys.reservations_key(w.ws), member) is not None
    assert await adm.void(app, lost.rid, "")
    assert await client.zscore(keys.reservations_key(w.ws), member) is None
    assert await client.exists(keys.legacy_idem_key(w.ws, app, lost.rid)) == 0
    totals = await agg_totals(client, w.ws)
    assert (totals["n"], totals["f"], totals["x"]) == (0, 0, 2)


async def test_the_short_path_finds_a_record_an_earlier_version_wrote(
    client: RedisClient,
) -> None:
    """Inside a paid session a keyed message takes the short path: a redelivery of one
    whose record an earlier version wrote is still a redelivery, counted in place."""
    _, _, w, adm = await admission(client, free=FREE)
    app = w.apps[0]
    user = LONG_USER + "5"
    assert (await adm.admit(app, "web", user)).units == 1  # opens and pays the session
    inside = await adm.admit(app, "web", user, LONG_KEY + "2", digest="abcd")
    assert (inside.admitted, inside.units, inside.duplicate) == (True, 0, False)
    await as_written_before(client, w.ws, app, inside.rid)
    again = await adm.admit(app, "web", user, LONG_KEY + "2", digest="abcd")
    assert (again.admitted, again.duplicate, again.units) == (True, True, 0)
    assert await client.exists(keys.idem_key(w.ws, app, inside.rid)) == 0
    rec = await client.get(keys.legacy_idem_key(w.ws, app, inside.rid)) or b""
    assert rec.split(b"\t")[1] == b"2"  # two deliveries counted
    assert (await adm.admit(app, "web", user, LONG_KEY + "2", digest="ffff")).code == 8
