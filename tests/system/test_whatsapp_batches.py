"""Signed WhatsApp deliveries that batch several messages (Meta does under load), on both
traffic servers: each message one admission, under its own ``from`` and ``id``, all or
none; a failed bot refunds them all; a retried batch costs nothing more. They were refused
422 ``batched_delivery``, and Meta retried the same batch for good: never delivered.

Real Redis, a real gateway and bot on loopback sockets.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import Settings
from gateway.appkeys import OWED
from gateway.channels import MAX_BATCH
from meter.accounts.seeding import seed
from meter.admission.journal import Journal
from meter.admission.reservations import JOURNAL_KIND as CONFIRM_KIND
from meter.redis_layer.client import RedisClient
from meter.store import open_store
from meter.usage.flusher import Flusher
from tests.support.bot import Bot, running_gateway
from tests.support.channel_keys import AuthWorld, auth_settings, meta_headers, set_secret
from tests.support.fresh import sample_now
from tests.support.metering import agg_totals
from tests.support.servers import RedisServer
from tests.support.settings import make_settings

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wabatch"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
TIGHT = f"{WS}_tight"  # funds for two requests
SESS = f"{WS}_sess"  # automation: $0.20 per 15-minute session
RATE = f"{WS}_rate"  # two messages a minute
SESS1 = f"{WS}_sess1"  # automation, funds for one session
OPEN = f"{WS}_open"  # no WhatsApp secret: unauthenticated
FUNDS = 10_000_000
PRICE = 10_000
SESSION = 200_000
ALICE, BOB, CAROL = "16505550001", "447700900123", "4915112345678"


def delivery(*changes: list[dict[str, Any]]) -> bytes:
    """A WhatsApp delivery: each argument a change's ``messages`` (``{"from", "id"}`` over
    the sample's message), each change in an entry of its own."""
    entry = json.loads(sample_now("whatsapp-message.json"))["entry"][0]
    out = []
    for messages in changes:
        change = json.loads(json.dumps(entry["changes"][0]))
        template = change["value"]["messages"][0]
        change["value"]["messages"] = [{**template, **m} for m in messages]
        out.append({"id": entry["id"], "changes": [change]})
    return json.dumps({"object": "whatsapp_business_account", "entry": out}).encode()


# When every message was sent: recent (a signed one must be), and one time for all, so
# that a message built twice is the same message (its redeliveries must repeat it; a
# second ticking between the two made it another message under a used key: 409).
SENT = str(int(time.time()))


def msg(user: str, wamid: str, **more: Any) -> dict[str, Any]:
    """A message of ``user`` under ``wamid``, sent at :data:`SENT`."""
    return {"from": user, "id": wamid, "timestamp": SENT, **more}


class World(AuthWorld):
    cfg: Settings

    async def post(
        self, body: bytes, app: str = APP, tail: str = "", headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **meta_headers(body), **(headers or {})}
        url = f"{self.gw.url}/hooks/whatsapp/{app}{tail}"
        async with self.http.post(url, data=body, headers=h) as resp:
            raw = await resp.read()
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, json.loads(raw)
            return resp.status, raw

    async def left(self, app: str = APP) -> int:
        """The app's own funds left, once the forward confirmations have landed."""
        return (await self.state())[0].app[app]

    async def charged(self) -> int:
        """Money charged in the workspace's live aggregates (refunds taken back)."""
        totals = await agg_totals(self.rclient, WS)
        return totals["f"] + totals["a"] + totals["p"]


@pytest.fixture
async def world(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> AsyncIterator[World]:
    cfg = auth_settings(redis_url, tmp_path)
    apps: dict[str, dict[str, Any]] = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS},
        TIGHT: {"product": "contact_center", "upstream_url": bot.url, "funds": 2 * PRICE,
                "use_free_credits": False},
        SESS: {"product": "automation", "upstream_url": bot.url, "funds": FUNDS,
               "use_free_credits": False},
        RATE: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS,
               "use_free_credits": False, "per_minute": 2},
        SESS1: {"product": "automation", "upstream_url": bot.url, "funds": SESSION,
                "use_free_credits": False},
    }  # fmt: skip
    apps[OPEN] = {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS}
    await seed(rclient, cfg, WS, apps)
    for app in apps:
        if app != OPEN:
            await set_secret(rclient, cfg, app, "whatsapp")
    async with running_gateway(cfg) as gw:
        w = World(WS, gw, bot, rclient, http)
        w.cfg = cfg
        yield w


async def test_a_batch_is_proxied_once_and_charged_per_message_once(world: World) -> None:
    """Three messages of two users: the bot gets the delivery once, three charges (three
    requests in the usage aggregates); Meta's retry of it costs nothing more; the bot is
    told no user or key of the client's (each message names its own)."""
    body = delivery([msg(ALICE, "wamid.A1"), msg(BOB, "wamid.B1")], [msg(ALICE, "wamid.A2")])
    forged = {"X-Channel-User-Id": "mallory", "Idempotency-Key": "one-for-all"}
    status, _ = await world.post(body, headers=forged)
    assert status == 200  # was 422 batched_delivery
    assert world.bot.count() == 1
    assert world.bot.calls[0].body == body
    assert "X-Channel-User-Id" not in world.bot.calls[0].headers
    assert "Idempotency-Key" not in world.bot.calls[0].headers
    assert await world.left() == FUNDS - 3 * PRICE
    assert await world.charged() == 3 * PRICE
    assert (await agg_totals(world.rclient, WS))["n"] == 3  # billable units: requests
    for _ in range(2):  # Meta retries the same batch: proxied, charged once per message
        assert (await world.post(body))[0] == 200
    assert world.bot.count() == 3
    assert await world.left() == FUNDS - 3 * PRICE
    assert await world.charged() == 3 * PRICE
    # A message of it delivered alone is another delivery of its key, charged nothing
    # (it was 409 duplicate_delivery: a redelivery had to repeat the whole body).
    alone = delivery([msg(ALICE, "wamid.A1")])
    assert (await world.post(alone))[0] == 200
    assert world.bot.count() == 4
    assert await world.left() == FUNDS - 3 * PRICE


async def test_a_message_retried_in_another_batch_is_a_redelivery(world: World) -> None:
    """Meta may retry messages in batches composed otherwise, or alone, or a message sent
    alone within a later batch. Each message is then a redelivery of its key (charged
    nothing), whatever else the delivery holds; the new ones are charged. A digest of the
    whole body made every such delivery 409 ``duplicate_delivery`` for good, its new
    messages never delivered. Another message under a used key is still 409."""
    first = delivery([msg(ALICE, "wamid.R1"), msg(BOB, "wamid.R2")])
    assert (await world.post(first))[0] == 200
    assert await world.charged() == 2 * PRICE
    # R2 again, in another entry, after a new message and with R1 left out.
    rebatched = delivery([msg(CAROL, "wamid.R3")], [msg(BOB, "wamid.R2")])
    assert (await world.post(rebatched))[0] == 200
    assert await world.charged() == 3 * PRICE
    alone = delivery([msg(ALICE, "wamid.R4")])
    assert (await world.post(alone))[0] == 200
    later = delivery([msg(BOB, "wamid.R5"), msg(ALICE, "wamid.R4"), msg(ALICE, "wamid.R1")])
    assert (await world.post(later))[0] == 200
    assert world.bot.count() == 4
    assert [c.body for c in world.bot.calls] == [first, rebatched, alone, later]
    assert await world.charged() == 5 * PRICE  # R1-R5, each once
    assert await world.left() == FUNDS - 5 * PRICE
    # The same id with other content is another message: 409, nothing charged, whether
    # alone or beside a new one (which then waits for the delivery to be fixed).
    for body in (
        delivery([msg(ALICE, "wamid.R4", text={"body": "a different prompt"})]),
        delivery([msg(CAROL, "wamid.R6"), msg(BOB, "wamid.R2", type="image")]),
    ):
        status, problem = await world.post(body)
        assert (status, problem["code"]) == (409, "duplicate_delivery"), problem
    assert world.bot.count() == 4
    assert await world.charged() == 5 * PRICE
    # Unsigned (no secret: anyone's envelope around a used message), the whole body is
    # what a redelivery repeats, as before.
    opened = delivery([msg(ALICE, "wamid.U1")])
    assert (await world.post(opened, app=OPEN))[0] == 200
    assert (await world.post(opened, app=OPEN))[0] == 200
    status, problem = await world.post(delivery([msg(ALICE, "wamid.U1")], []), app=OPEN)
    assert (status, problem["code"]) == (409, "duplicate_delivery"), problem
    assert world.bot.count() == 6


async def test_duplicate_wamids_in_a_batch_are_one_message(world: World) -> None:
    """The same message twice in a batch is charged once, each copy a delivery of its
    key; a key is one user's, so the same wamid from two users is two messages."""
    m = msg(CAROL, "wamid.C1")
    body = delivery([m], [m, msg(CAROL, "wamid.C2"), msg(BOB, "wamid.C1")])
    assert (await world.post(body))[0] == 200
    assert world.bot.count() == 1
    assert await world.left() == FUNDS - 3 * PRICE
    assert (await world.post(body))[0] == 200
    assert await world.left() == FUNDS - 3 * PRICE


async def test_copies_in_a_batch_count_against_the_delivery_cap(world: World) -> None:
    """A key is honoured at most 5 times, for one charge. 100 copies of one message in a
    batch were one delivery of it: sent 5 times, the bot answered 500 copies for one
    charge. Each copy is a delivery now: 100 copies are 409 ``duplicate_delivery``
    (nothing charged, the bot not called); 2 copies are served twice, then 409 when the
    third sending would make 6 deliveries."""
    many = delivery([msg(ALICE, "wamid.D1", text={"body": "expensive prompt"})] * 100)
    for _ in range(2):
        status, problem = await world.post(many)
        assert (status, problem["code"]) == (409, "duplicate_delivery"), problem
    assert world.bot.count() == 0
    assert await world.charged() == 0
    two = delivery([msg(BOB, "wamid.D2")] * 2)
    assert [(await world.post(two))[0] for _ in range(3)] == [200, 200, 409]
    assert world.bot.count() == 2
    assert await world.left() == FUNDS - PRICE


async def test_a_batch_one_message_of_which_is_refused_charges_nothing(world: World) -> None:
    """Credit for two requests, a batch of three: refused 402, the two admitted refunded,
    the bot not called. Refunded, the keys are charged afresh when they come again (a
    batch made to fail cannot buy its other messages for later)."""
    body = delivery([msg(ALICE, "wamid.T1"), msg(BOB, "wamid.T2"), msg(ALICE, "wamid.T3")])
    charged = await world.charged()
    for _ in range(2):
        status, problem = await world.post(body, app=TIGHT)
        assert (status, problem["code"]) == (402, "credits_exhausted")
        assert world.bot.count() == 0
        assert await world.left(TIGHT) == 2 * PRICE
        assert await world.charged() == charged
    two = delivery([msg(ALICE, "wamid.T1"), msg(BOB, "wamid.T2")])
    assert (await world.post(two, app=TIGHT))[0] == 200
    assert await world.left(TIGHT) == 0
    # Out of credit, a retry is refused as a single message's is (the contract), and
    # what it admitted before the refusal is given back: the served charges stand.
    for again in (two, body):
        assert (await world.post(again, app=TIGHT))[1]["code"] == "credits_exhausted"
        assert await world.left(TIGHT) == 0
        assert await world.charged() == charged + 2 * PRICE
    assert world.bot.count() == 1


async def test_a_batch_past_the_rate_limit_charges_nothing(world: World) -> None:
    """Two messages a minute: a batch of three is refused 429, nothing charged."""
    body = delivery([msg(ALICE, "wamid.R1"), msg(BOB, "wamid.R2"), msg(BOB, "wamid.R3")])
    status, problem = await world.post(body, app=RATE)
    assert (status, problem["code"]) == (429, "rate_limited")
    assert world.bot.count() == 0
    assert await world.left(RATE) == FUNDS
    assert await world.charged() == 0


async def test_the_bot_failing_refunds_every_message(world: World) -> None:
    """A 5xx of the bot refunds the whole batch (502, the bot's body withheld)."""
    body = delivery([msg(ALICE, "wamid.F1"), msg(BOB, "wamid.F2")], [msg(CAROL, "wamid.F3")])
    for _ in range(2):  # the retry fails too: still nothing charged
        status, problem = await world.post(body, tail="/status/503")
        assert (status, problem["code"]) == (502, "upstream_error")
        assert await world.left() == FUNDS
        assert await world.charged() == 0
    assert world.bot.count("/status/503") == 2
    # Served at last: charged once per message.
    assert (await world.post(body, tail="/status/200"))[0] == 200
    assert await world.left() == FUNDS - 3 * PRICE


async def test_sessions_are_per_message(world: World) -> None:
    """A session-billed app: Alice's two messages share the session her first opens, Bob
    opens his own: two sessions charged for three messages."""
    body = delivery([msg(ALICE, "wamid.S1"), msg(BOB, "wamid.S2"), msg(ALICE, "wamid.S3")])
    assert (await world.post(body, app=SESS))[0] == 200
    assert await world.left(SESS) == FUNDS - 2 * SESSION
    totals = await agg_totals(world.rclient, WS)
    assert (totals["n"], totals["m"]) == (2, 3)  # sessions, messages


async def test_hostile_batches_get_no_message_free(world: World) -> None:
    """What a tenant signing its own bodies (the app secret is its own) might try: a
    message without ``from`` (refused 400, nothing charged), without ``id`` (charged at
    every delivery, a header key notwithstanding), messages under other spellings of
    ``messages``/``entry`` (each charged), one wamid naming two different messages or a
    message naming two users (422), more than MAX_BATCH messages (422)."""
    before = await world.left()
    nobody = delivery([msg(ALICE, "wamid.H1"), {"from": None, "id": "wamid.H2"}])
    doc = json.loads(nobody)
    del doc["entry"][0]["changes"][0]["value"]["messages"][1]["from"]
    for body in (nobody, json.dumps(doc).encode()):
        status, problem = await world.post(body)
        assert (status, problem["code"]) == (400, "missing_channel_user")
    assert world.bot.count() == 0
    assert await world.left() == before
    # Without an id: charged at each delivery.
    doc = json.loads(delivery([msg(ALICE, "wamid.H3"), msg(BOB, "x")]))
    del doc["entry"][0]["changes"][0]["value"]["messages"][1]["id"]
    keyless = json.dumps(doc).encode()
    for n in (1, 2):
        assert (await world.post(keyless, headers={"Idempotency-Key": "k"}))[0] == 200
        assert await world.left() == before - (1 + n) * PRICE
    before = await world.left()
    # Messages under other spellings: each a message, charged.
    doc = json.loads(delivery([msg(ALICE, "wamid.H4")], [msg(BOB, "wamid.H5")]))
    value = doc["entry"][1]["changes"][0]["value"]
    value["Messages"] = [*value.pop("messages"), msg(CAROL, "wamid.H6")]
    doc["Entry"] = [doc["entry"].pop(1)]
    doc["entry"][0]["changes"][0]["value"]["MESSAGES"] = [msg(CAROL, "wamid.H7")]
    body = json.dumps(doc).encode()
    assert (await world.post(body))[0] == 200
    assert await world.left() == before - 4 * PRICE
    calls = world.bot.count()
    before = await world.left()
    two_texts = delivery(
        [msg(ALICE, "wamid.H8", text={"body": "one"}), msg(ALICE, "wamid.H8", text={"body": "2"})]
    )
    two_users = delivery([msg(ALICE, "wamid.H9"), {**msg(ALICE, "wamid.H10"), "From": BOB}])
    many = delivery([msg(ALICE, f"wamid.M{i}") for i in range(MAX_BATCH + 1)])
    for body in (two_texts, two_users, many):
        status, problem = await world.post(body)
        assert (status, problem["code"]) == (422, "batched_delivery"), problem
    assert world.bot.count() == calls
    assert await world.left() == before
    # The bound itself is served.
    most = delivery([msg(ALICE, f"wamid.M{i}") for i in range(MAX_BATCH)])
    assert (await world.post(most))[0] == 200
    assert await world.left() == before - MAX_BATCH * PRICE


async def test_an_unsigned_batch_is_metered_by_its_messages_not_its_headers(
    world: World,
) -> None:
    """Without a secret every callback is billable, a header naming its user and key:
    a batch's messages are still one admission each under the body's users and ids (one
    header key for all would make them one charge)."""
    body = delivery([msg(ALICE, "wamid.U1"), msg(BOB, "wamid.U2"), msg(ALICE, "wamid.U3")])
    one = {"X-Channel-User-Id": "mallory", "Idempotency-Key": "same"}
    for _ in range(2):
        assert (await world.post(body, app=OPEN, headers=one))[0] == 200
        assert await world.left(OPEN) == FUNDS - 3 * PRICE
    assert "Idempotency-Key" not in world.bot.calls[-1].headers


async def test_messages_behind_a_key_named_twice_are_refused(world: World) -> None:
    """``"value":{"messages":[100]},"value":{"statuses":[..]}``: orjson keeps the last
    ``value`` (a status: nothing to bill), a Go bot merges both and reads 100 messages.
    Signed or not, refused 422 ``uninspectable_delivery``, the bot not called (it was
    served for nothing)."""
    messages = json.dumps([msg(f"1650555{i:04d}", f"wamid.V{i}") for i in range(MAX_BATCH)])
    statuses = '{"messaging_product":"whatsapp","statuses":[{"id":"s","status":"read"}]}'
    body = (
        '{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":'
        f'"messages","value":{{"messages":{messages}}},"value":{statuses}}}]}}]}}'
    ).encode()
    for app in (APP, OPEN):
        status, problem = await world.post(body, app=app)
        assert (status, problem["code"]) == (422, "uninspectable_delivery"), problem
        assert "names one key twice" in problem["detail"]
    assert world.bot.count() == 0
    assert await world.charged() == 0


async def test_a_malformed_user_or_key_admits_no_message_of_the_batch(world: World) -> None:
    """Two messages a minute: a batch of two good messages and one whose ``from`` (a tab,
    300 characters) or ``id`` (300 characters) cannot be metered is refused 400 before
    anything is admitted. The two good ones were admitted then given back, and still
    filled the app's rate window: anyone could keep an app at 429 for nothing."""
    bad_ones = (msg("\t", "wamid.X3"), msg("1" * 300, "wamid.X3"), msg(CAROL, "w" * 300))
    for i, bad in enumerate(bad_ones):
        body = delivery([msg(ALICE, f"wamid.X{i}1"), msg(BOB, f"wamid.X{i}2"), bad])
        status, problem = await world.post(body, app=RATE)
        assert (status, problem["code"]) == (400, "invalid_channel_user"), problem
    assert world.bot.count() == 0
    assert (await agg_totals(world.rclient, WS))["x"] == 0  # nothing admitted, nothing refunded
    two = delivery([msg(ALICE, "wamid.X1"), msg(BOB, "wamid.X2")])
    assert (await world.post(two, app=RATE))[0] == 200  # was 429 rate_limited
    assert await world.left(RATE) == FUNDS - 2 * PRICE


async def test_a_malformed_batch_failing_open_owes_nothing(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
) -> None:
    """Redis down, failing open: the good messages of a batch refused 400 for a malformed
    ``from`` were each owed then forgiven, adding 99 voids to the owed list a request
    (~1,000 such requests filled it, and real voids were then dropped). Checked first,
    nothing is owed or voided."""
    # Redis is killed (refused at once), so the patient timeout of make_settings: with
    # 0.3 s the warm-up could time out on a busy machine and be owed, one debt too many.
    cfg = make_settings(redis_url, tmp_path, fail_mode="open")
    await seed(rclient, cfg, WS, {OPEN: {"product": "contact_center", "upstream_url": bot.url,
                                         "funds": FUNDS}})  # fmt: skip
    async with running_gateway(cfg) as gw:
        owed = gw.gateway.traffic[OWED]
        w = World(WS, gw, bot, rclient, http)
        assert (await w.post(delivery([msg(ALICE, "wamid.O0")]), app=OPEN))[0] == 200
        redis_server.kill()
        try:
            body = delivery([msg(f"u{i}", f"wamid.O{i}") for i in range(1, 99)] + [msg("\t", "x")])
            status, problem = await w.post(body, app=OPEN)
            assert (status, problem["code"]) == (400, "invalid_channel_user")
            assert (len(owed.debts), len(owed.voids)) == (0, 0)  # were 0 and 98
        finally:
            redis_server.start()


async def test_copies_under_one_key_must_be_the_same_json(world: World) -> None:
    """``"flag":true`` and ``"flag":1`` under one wamid are two different messages (422),
    not one copy charged once (Python's ``==`` found them equal); identical copies, in
    any key order, are still one message."""
    body = delivery([msg(ALICE, "wamid.E1", flag=True), msg(ALICE, "wamid.E1", flag=1)])
    status, problem = await world.post(body)
    assert (status, problem["code"]) == (422, "batched_delivery"), problem
    assert world.bot.count() == 0
    same = delivery([msg(ALICE, "wamid.E2", a=1, b=2), {"b": 2, "a": 1, **msg(ALICE, "wamid.E2")}])
    assert (await world.post(same))[0] == 200
    assert await world.charged() == PRICE


async def test_messages_not_served_leave_the_flushed_message_counts(world: World) -> None:
    """Usage rows count messages served. A message admitted inside a paid session (no
    charge) whose bot failed, and the messages of a batch refused partway, were
    un-counted from their session but stayed in the aggregates' messages: flushed rows
    said 3 messages for none served. Now they leave both, in the bucket counted in."""
    assert (await world.post(delivery([msg(ALICE, "wamid.N1")]), app=SESS))[0] == 200
    failed = await world.post(delivery([msg(ALICE, "wamid.N2")]), app=SESS, tail="/status/503")
    assert failed[0] == 502
    # Funds for one session: Alice's two open and ride it, Bob's is refused; all undone.
    body = delivery([msg(ALICE, "wamid.P1"), msg(ALICE, "wamid.P2"), msg(BOB, "wamid.P3")])
    for _ in range(3):
        status, problem = await world.post(body, app=SESS1)
        assert (status, problem["code"]) == (402, "credits_exhausted")
    totals = await agg_totals(world.rclient, WS)
    assert (totals["n"], totals["m"]) == (1, 1)  # was (1, 5)
    await world.state()
    store = open_store(world.cfg.store_url)
    await store.migrate()
    try:
        await Flusher(world.rclient, store, world.cfg).flush_once(force=True)
    finally:
        await store.close()
    db = sqlite3.connect(world.cfg.store_url.removeprefix("sqlite:///"))
    try:
        rows = db.execute(
            "SELECT app_id, SUM(units), SUM(messages) FROM usage_buckets"
            " WHERE workspace_id = ? GROUP BY app_id ORDER BY app_id",
            (WS,),
        ).fetchall()
        sessions = db.execute("SELECT app_id, messages FROM billing_sessions").fetchall()
    finally:
        db.close()
    assert rows == [(SESS, 1, 1), (SESS1, 0, 0)]  # were messages 2 and 3
    assert sessions == [(SESS, 1)]


async def test_a_batch_is_confirmed_forwarded_in_one_journal_write(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's charges are confirmed forwarded (the journal that keeps the sweeper from
    refunding them after a crash) in one ``write(2)``: line by line, a process killed
    between two writes left the rest, served, to be refunded."""
    writes: list[int] = []  # lines in each write to a confirmations journal
    append, append_all = Journal.append, getattr(Journal, "append_all", None)

    def one(self: Journal, line: str) -> None:
        if self.path.name.startswith(CONFIRM_KIND):
            writes.append(1)
        append(self, line)

    def several(self: Journal, lines: list[str]) -> None:
        if self.path.name.startswith(CONFIRM_KIND):
            writes.append(len(lines))
        assert append_all is not None
        append_all(self, lines)

    monkeypatch.setattr(Journal, "append", one)
    monkeypatch.setattr(Journal, "append_all", several, raising=False)
    body = delivery([msg(ALICE, "wamid.J1"), msg(BOB, "wamid.J2")], [msg(CAROL, "wamid.J3")])
    assert (await world.post(body))[0] == 200
    await world.state()  # the confirmations reached Redis
    assert writes == [3]  # was [1, 1, 1]
    assert await world.left() == FUNDS - 3 * PRICE
