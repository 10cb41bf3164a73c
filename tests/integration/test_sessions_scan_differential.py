"""The bounded read of live sessions against the one-snapshot read it replaced.

``peek_sessions.lua`` (removed in 0a4b71a; kept here as the reference, with the page logic
of the ``live_sessions.py`` of then) read every live session bucket and claimed copy in
one script. :mod:`meter.usage.live_scan` reads them in steps. Seeded random runs drive one
workspace through admissions (conversations that go on, go idle and open again in the
same bucket: displaced entries, later blocks), refunds, and flushes taken step by step
(claim, store write, ack; open buckets copied as a forced flush does), and:

* between steps (nothing runs during a read) a page, any limit, order, filter and cursor
  (one a page gave, or forged anywhere), and the streamed listing are exactly the
  reference's;
* with those operations run after any command the read makes, a page lists each
  session once, in order, past its cursor, only sessions that were admitted, and every
  session the reference lists both before and after the read that falls on the page.

No timing: every interleaving is the seeded RNG's choice, run from the reader's commands
(the interleaved reads step one field, bucket start and claim at a time, every hash a hash
table). Which fields an ``HSCAN`` step returns follows Redis's hashing (seeded per server
start), so the run is not replayed bit for bit: the checks hold for any order, and a
failure names the seed, query and cursor.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from meter.accounts.pages import encode
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store
from meter.usage import live_scan
from meter.usage.batches import SessionEntry, build, session_row
from meter.usage.claims import Claim, Claims
from meter.usage.live_sessions import Listed, every_session, sessions_page
from tests.support.clock import Clock
from tests.support.flushkit import USD, opened_store, seed_ws
from tests.support.metering import admitter
from tests.support.settings import make_settings

# The removed peek_sessions.lua, lib_peek.lua's peek() inlined.
OLD_PEEK = """
local P, lo, hi, kind = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 'sr'
local out = {}
for _, b in ipairs(redis.call('ZRANGEBYSCORE', P .. ':' .. kind .. 'i', lo, hi)) do
  local items = redis.call('HGETALL', P .. ':' .. kind .. ':' .. b)
  if #items > 0 then out[#out + 1] = {tonumber(b), 0, items} end
end
local reg = redis.call('HGETALL', P .. ':cl')
for i = 1, #reg, 2 do
  local k, b = string.match(reg[i], '^(%a+):(%d+)$')
  local nb = tonumber(b)
  if k == kind and nb >= lo and nb <= hi then
    local gen = reg[i + 1]
    local claimed = P .. ':c:' .. kind .. ':' .. b .. ':' .. gen
    out[#out + 1] = {nb, tonumber(gen), redis.call('HGETALL', claimed)}
  end
end
return out
"""

# (block, idle, clock steps between messages): an idle end shorter than a bucket (a new
# conversation in the same bucket displaces the old entry), and longer than a block (a
# later block's opener arrives up to a block after its bucket ends).
SHAPES = {
    "short-idle": (120.0, 20.0, 3, [0.3, 1, 2, 4, 8, 25, 130]),
    "long-idle": (60.0, 150.0, 2, [1, 3, 8, 15, 30] * 4 + [400]),
}
RUNS = 5
STEPS = 70
READS = 150


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async for s in opened_store(f"sqlite:///{tmp_path / 'creditgate.db'}"):
        yield s


def order(x: Listed) -> tuple[int, str]:
    return x.row.start_ms, x.row.id


def shown(x: Listed) -> tuple[Any, ...]:
    r = x.row
    return (r.id, r.start_ms, r.end_ms, r.app_id, r.channel, r.channel_user, r.messages,
            r.amount, x.open)  # fmt: skip


class Ref:
    """The old read: Redis in one snapshot, merged with the store, the old page logic."""

    def __init__(self, client: RedisClient, store: Store, ws: str, opts: dict[str, Any]):
        self.client, self.store, self.ws, self.opts = client, store, ws, opts

    async def redis(self, from_ms: int, to_ms: int) -> dict[str, Listed]:
        block_ms, idle_ms, now_ms = (self.opts[k] for k in ("block_ms", "idle_ms", "now_ms"))
        sb = max(1, block_ms // 1000)
        lo, hi = (from_ms // 1000 // sb - 1) * sb, (to_ms // 1000 // sb) * sb
        snap = await self.client.eval(OLD_PEEK, 1, keys.ws_keys(self.ws)[0], lo, hi)  # type: ignore[misc]
        out: dict[str, tuple[int, Listed]] = {}
        for _b, gen, items in snap:
            for f, v in zip(items[0::2], items[1::2], strict=True):
                row = session_row(self.ws, int(gen), f, v, block_ms)
                if row is None or not from_ms <= row.start_ms < to_ms:
                    continue
                current = int(gen) == 0 and f.decode().count("\t") == 2
                ends = SessionEntry.parse(v).block_start(block_ms) + block_ms
                is_open = current and now_ms < row.end_ms + idle_ms and now_ms < ends
                rank = 1 << 62 if int(gen) == 0 else int(gen)
                if row.id not in out or out[row.id][0] < rank:
                    out[row.id] = (rank, Listed(row, is_open))
        return {k: v for k, (_, v) in out.items()}

    async def listing(self, from_ms: int, to_ms: int, q: dict[str, Any]) -> list[Listed]:
        """Every session of the range, filtered, in the order asked."""
        stored = await self.store.sessions(
            self.ws, from_ms, to_ms, app_id=q["app_id"], app_ids=None, channel=q["channel"]
        )
        merged = {r.id: Listed(r, False) for r in stored}
        for bsid, item in (await self.redis(from_ms, to_ms)).items():
            if q["app_id"] not in (None, item.row.app_id):
                continue
            if q["channel"] not in (None, item.row.channel):
                continue
            merged[bsid] = item
        return sorted(merged.values(), key=order, reverse=q["desc"])

    def page(
        self, every: list[Listed], after: tuple[int, str] | None, limit: int, desc: bool
    ) -> tuple[list[Listed], tuple[int, str] | None]:
        past = [
            x for x in every if after is None or (order(x) < after if desc else order(x) > after)
        ]
        if len(past) <= limit:
            return past, None
        return past[:limit], order(past[limit - 1])


class Stepping:
    """The reader's client: after each command it makes, ``hook`` may run (other traffic
    arriving between two steps of the read), told the key the command read."""

    def __init__(self, client: RedisClient, hook: Callable[[str], Awaitable[None]]) -> None:
        self._c, self._hook, self.calls = client, hook, 0

    def __getattr__(self, name: str) -> Any:
        inner = getattr(self._c, name)
        if name not in {"hscan", "hget", "zrangebyscore"}:
            return inner

        async def call(*a: Any, **kw: Any) -> Any:
            got = await inner(*a, **kw)
            self.calls += 1
            await self._hook(str(a[0]))
            return got

        return call


class World:
    """One workspace and the operations that change its sessions, chosen by ``rng``."""

    def __init__(
        self, rng: random.Random, client: RedisClient, store: Store, ws: str,
        apps: list[str], adm: Admitter, clock: Clock, cfg: Any, shape: str,
    ) -> None:  # fmt: skip
        self.rng, self.client, self.store, self.ws, self.apps = rng, client, store, ws, apps
        self.adm, self.clock, self.cfg = adm, clock, cfg
        self.claims = Claims(client, "diff-flusher", 10**9, clock=clock)
        self.decisions: list[tuple[str, Decision]] = []
        self.admitted: set[str] = set()
        self.pending: list[tuple[Claim, int]] = []  # (claim, 0 claimed | 1 written)
        self.block_s, self.idle_s, self.users, self.steps = SHAPES[shape]
        self.sr_open = max(1, int(self.block_s)) + self.block_s + self.idle_s

    async def admit(self) -> None:
        self.clock.advance(self.rng.choice(self.steps))
        app = self.rng.choice(self.apps)
        d = await self.adm.admit(
            app, self.rng.choice(["web", "sms"]), f"u{self.rng.randrange(self.users)}"
        )
        assert d.admitted, d
        if d.bsid:
            self.admitted.add(d.bsid)
        self.decisions.append((app, d))

    async def refund(self) -> None:
        if self.decisions:
            app, d = self.rng.choice(self.decisions[-20:])
            await self.adm.refund(app, d)

    async def claim(self) -> None:
        idx = await self.client.zrange(keys.sessions_index_key(self.ws), 0, -1)
        busy = {c.bucket for c, _ in self.pending}
        free = [int(b) for b in idx if int(b) not in busy]
        if not free:
            return
        b = self.rng.choice(free)
        keep = b + self.sr_open + self.cfg.flush_grace_s > self.clock.now
        _code, c = await self.claims.claim(self.ws, "sr", b, keep_index=keep)
        if c is not None:
            self.pending.append((c, 0))

    async def advance_flush(self) -> None:
        if not self.pending:
            return
        i = self.rng.randrange(len(self.pending))
        c, stage = self.pending[i]
        if stage == 0:
            await self.store.write_flush_batch(
                c.batch_id, c.ws, c.kind, c.bucket * 1000,
                session_rows=build(c, int(self.block_s * 1000)).sessions, known_gen=c.known,
            )  # fmt: skip
            self.pending[i] = (c, 1)
        else:
            await self.claims.ack(c)
            del self.pending[i]

    async def displace(self, key: str) -> None:
        """A conversation of live bucket ``key`` that ends and opens again in the same
        bucket: its entry moves to a field of its own (admit_rules.lua write_session)."""
        b = int(key.rpartition(":")[2])
        if self.clock.now + self.idle_s + 1 >= b + self.block_s:
            return
        fields = [f.decode() for f in await self.client.hkeys(key) if f.count(b"\t") == 2]
        if fields:
            app, channel, user = self.rng.choice(sorted(fields)).split("\t")
            self.clock.advance(self.idle_s + 1)
            d = await self.adm.admit(app, channel, user)
            assert d.admitted, d
            self.admitted.add(d.bsid)
            self.decisions.append((app, d))

    async def step(self) -> None:
        op = self.rng.choices(
            [self.admit, self.refund, self.claim, self.advance_flush], [6, 1, 1, 2]
        )[0]
        await op()


def _opts(world: World) -> dict[str, Any]:
    return {"block_ms": int(world.block_s * 1000), "idle_ms": int(world.idle_s * 1000),
            "now_ms": int(world.clock.now * 1000)}  # fmt: skip


def _query(rng: random.Random, apps: list[str]) -> dict[str, Any]:
    return {
        "app_id": rng.choice([None, None, *apps]),
        "channel": rng.choice([None, None, "web", "sms"]),
        "desc": rng.random() < 0.5,
    }


def _cursor(rng: random.Random, every: list[Listed], lo: int, hi: int) -> tuple[int, str] | None:
    pick = rng.random()
    if pick < 0.3 or not every:
        return None
    if pick < 0.7:
        return order(rng.choice(every))
    x = rng.choice(every)  # forged: next to a real key, or anywhere in the range
    return rng.choice([
        (x.row.start_ms, x.row.id + "0"), (x.row.start_ms, x.row.id[:-1]),
        (x.row.start_ms - 1, "~"), (x.row.start_ms + 1, ""),
        (rng.randrange(lo - 400_000, hi + 400_000), rng.choice(["", "s", "~"])),
    ])  # fmt: skip


async def _world(
    seed: int, shape: str, rclient: RedisClient, store: Store
) -> tuple[World, Ref, int, int]:
    block_s, idle_s, _, _ = SHAPES[shape]
    cfg = make_settings(
        session_block_s=block_s, session_idle_s=idle_s, flush_bucket_s=60, flush_grace_s=1,
        rate_per_minute=10_000_000, rate_per_hour=10_000_000,
    )  # fmt: skip
    clock = Clock.past()
    w = await seed_ws(rclient, store, cfg, clock, products=["automation"] * 2, pool=10_000 * USD)
    world = World(random.Random(seed), rclient, store, w.ws, w.apps,
                  admitter(rclient, cfg, clock), clock, cfg, shape)  # fmt: skip
    lo = int(clock.now * 1000) - 30_000
    return world, Ref(rclient, store, w.ws, {}), lo, lo + 6 * 3_600_000


async def _page(
    client: Any, world: World, lo: int, hi: int, q: dict[str, Any],
    after: tuple[int, str] | None, limit: int,
) -> Any:  # fmt: skip
    kind = "sessions-desc" if q["desc"] else "sessions"
    cursor = None if after is None else encode(kind, list(after))
    return await sessions_page(
        world.store, cast(RedisClient, client), world.ws, lo, hi, app_ids=None, cursor=cursor,
        limit=limit, **q, **_opts(world),
    )  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(RUNS))
async def test_between_steps_a_page_is_the_reference_page(
    seed: int, shape: str, client: RedisClient, store: Store
) -> None:
    """On a single Redis and on a Redis Cluster (``client``)."""
    rclient = client
    world, ref, lo, hi = await _world(seed, shape, rclient, store)
    rng = random.Random(seed * 7919 + 1)
    for _ in range(STEPS):
        await world.step()
        ref.opts = _opts(world)
        for _ in range(2):
            q = _query(rng, world.apps)
            every = await ref.listing(lo, hi, q)
            after = _cursor(rng, every, lo, hi)
            limit = rng.choice([1, 2, 3, 5, 8, 40, 200])
            want, want_next = ref.page(every, after, limit, q["desc"])
            got = await _page(world.client, world, lo, hi, q, after, limit)
            assert [shown(x) for x in got.items] == [shown(x) for x in want], (q, after, limit)
            assert (got.next_cursor is None) == (want_next is None)
        # Every page of one listing, one after another: each cursor a page gives.
        q, limit, after = _query(rng, world.apps), rng.choice([1, 2, 3]), None
        every = await ref.listing(lo, hi, q)
        while True:
            want, want_next = ref.page(every, after, limit, q["desc"])
            got = await _page(world.client, world, lo, hi, q, after, limit)
            assert [shown(x) for x in got.items] == [shown(x) for x in want], (q, after, limit)
            assert (got.next_cursor is None) == (want_next is None)
            if want_next is None:
                break
            after = want_next
        q = _query(rng, world.apps)
        streamed = [x async for p in every_session(
            store, rclient, world.ws, lo, hi, app_ids=None, page=rng.choice([1, 3, 1000]),
            **q, **_opts(world)) for x in p]  # fmt: skip
        assert [shown(x) for x in streamed] == [shown(x) for x in await ref.listing(lo, hi, q)]
    assert len(world.admitted) > 20


@pytest.fixture
async def stepwise(rclient: RedisClient, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Reads a field (a bucket start, a claim) at a time, every hash a hash table (a small
    one, listpack-encoded, gives HSCAN all of it in one reply): traffic can come between."""
    monkeypatch.setattr(live_scan, "SCAN_COUNT", 1)
    monkeypatch.setattr(live_scan, "INDEX_PAGE", 1)
    was = await rclient.config_get("hash-max-listpack-entries")
    await rclient.config_set("hash-max-listpack-entries", 0)
    yield
    await rclient.config_set("hash-max-listpack-entries", next(iter(was.values())))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(RUNS))
async def test_a_page_read_while_sessions_change_misses_and_repeats_none(
    seed: int, shape: str, rclient: RedisClient, store: Store, stepwise: None
) -> None:
    world, ref, lo, hi = await _world(seed, shape, rclient, store)
    rng = random.Random(seed * 104_729 + 3)

    async def traffic(key: str) -> None:
        if ":sr:" in key and ":c:" not in key and rng.random() < 0.3:
            await world.displace(key)
        for _ in range(rng.choices([0, 1, 3], [70, 25, 5])[0]):
            await world.step()

    reader = Stepping(rclient, traffic)
    for _ in range(READS):
        await world.step()
        ref.opts = _opts(world)
        q = _query(rng, world.apps)
        before = await ref.listing(lo, hi, q)
        after = _cursor(rng, before, lo, hi)
        limit = rng.choice([1, 2, 3, 5, 8, 40, 200])
        got = await _page(reader, world, lo, hi, q, after, limit)
        ref.opts = _opts(world)
        later = {x.row.id: order(x) for x in await ref.listing(lo, hi, q)}
        keys_ = [order(x) for x in got.items]
        assert len(set(x.row.id for x in got.items)) == len(keys_)
        assert keys_ == sorted(keys_, reverse=q["desc"])
        desc = q["desc"]
        if after is not None:
            assert all((k < after) if desc else (k > after) for k in keys_)
        assert {x.row.id for x in got.items} <= world.admitted
        last = keys_[-1] if got.next_cursor is not None else None
        ids = {x.row.id for x in got.items}
        for x in before:
            k = order(x)
            if later.get(x.row.id) != k:
                continue  # gone (refunded) or changed during the read
            if after is not None and not (k < after if desc else k > after):
                continue
            if last is not None and (k < last if desc else k > last):
                continue
            assert x.row.id in ids, (x.row.id, k, q, after, limit, seed)
    assert reader.calls > STEPS


@pytest.mark.parametrize("desc", [False, True])
async def test_a_later_block_opened_after_its_bucket_ends_is_on_its_page(
    desc: bool, rclient: RedisClient, store: Store
) -> None:
    """A conversation's second block, opened late in it, is in the bucket of the block's
    start but starts after sessions of the next bucket: a page of those (newest first,
    limit 1) must not skip its bucket."""
    world, ref, lo, hi = await _world(0, "long-idle", rclient, store)
    app, clock, adm = world.apps[0], world.clock, world.adm
    b = int(clock.now) // 60 * 60  # Clock.past() is on a whole hour
    clock.advance(50)
    first = await adm.admit(app, "web", "late")  # its block starts at b + 50
    clock.advance(71)
    early = [await adm.admit(app, "web", f"early{i}") for i in range(3)]  # b + 121
    clock.advance(4)
    late = await adm.admit(app, "web", "late")  # block 2: starts b + 110, opened b + 125
    assert late.bsid != first.bsid
    ref.opts = _opts(world)
    q = {"app_id": None, "channel": None, "desc": desc}
    every = await ref.listing(lo, hi, q)
    assert [x.row.id for x in every][:: -1 if desc else 1] == [
        first.bsid,
        *(d.bsid for d in early),
        late.bsid,
    ]
    # In bucket b + 60 (its block's start), after the sessions of bucket b + 120.
    lrow = next(x.row for x in every if x.row.id == late.bsid)
    assert lrow.start_ms == (b + 125) * 1000
    assert await rclient.hexists(
        keys.sessions_key(world.ws, b + 60), "\t".join([app, "web", "late"])
    )
    after = None
    while True:
        want, want_next = ref.page(every, after, 1, desc)
        got = await _page(rclient, world, lo, hi, q, after, 1)
        assert [shown(x) for x in got.items] == [shown(x) for x in want], after
        if want_next is None:
            break
        after = want_next
