"""admit.lua against a pinned earlier version of itself: the same replies, the same keyspace.

Changes made to admit.lua for speed alone (issue 13: its fixed cost per call) must not
change what it answers or writes. A scripted mixed workload (new sessions, in-session
messages with and without channel keys, short and long keys, redeliveries, refusals of
every kind, shadow mode, notifications, checks, settlements, free and paid debits, the
free credits' exhaustion and lapse, block and idle ends, rate-window trims, an enterprise
licence) runs call by call on two real redis-servers, one with the script of ``REFERENCE``
(read from git) and one with today's; after each call the replies must be equal and the
two keyspaces equal byte for byte (every key's type, encoding and value, a listpack's
fields in their order) and in their expiry.

When admit.lua's behaviour changes on purpose, move ``REFERENCE`` to the commit that
changed it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from meter.redis_layer.scripts import lua_source
from tests.support.servers import RedisServer, start_redis

# main before the fixed-cost work on admit.lua (branch lua-fixed).
REFERENCE = "fbb2c03"
ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r"^-- #include ([a-z_]+\.lua)$", re.M)


def reference_source() -> str:
    def show(file: str) -> str:
        done = subprocess.run(
            ["git", "show", f"{REFERENCE}:meter/lua/{file}"],
            cwd=ROOT, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"the reference admit.lua ({REFERENCE}) is not in this checkout")
        return done.stdout

    return INCLUDE.sub(lambda m: show(m.group(1)), show("admit.lua"))


T0 = 1_800_000_000_000
BLOCK, IDLE = 900_000, 1_800_000
LONG = "z" * 60  # a WhatsApp-long channel key: its record is named by its digest


def head(now: int, order: str = "f") -> list[Any]:
    # now, block, idle, idem, flush bucket, low threshold, order, pm, ph, minute, hour,
    # period, refund, deliveries, reservation, free keys per app, per workspace
    return [now, BLOCK, IDLE, 86_400_000, 60, 400_000, order, 1000, 10000, 60_000,
            3_600_000, "202701", 600_000, 2, 30_000, 2, 3]  # fmt: skip


# ARGV[18], which the reference does not have: the usage fields past which a refusal on a
# channel new to the bucket is counted under "(overflow)" (branch chan-cap). Far above
# what the workload writes, so the two scripts must agree call by call.
USAGE_FIELDS = 1000


def seed(r: redis.Redis) -> None:
    r.hset("cg:{wa}:ws", mapping={
        "type": "standard", "free": 150_000, "free_exp": T0 + 2_000_000, "pool": 700_000,
        "apps": 90_000, "np": 5_000, "seq": 7, "free_granted": 3,
        "u:auto": "session", "p:auto": 50_000, "u:search": "query", "p:search": 20_000,
    })  # fmt: skip
    apps: dict[str, dict[str, Any]] = {
        "wa_1": {"product": "auto"},
        "wa_2": {"product": "search", "app": 90_000, "use_free": 0},
        "wa_3": {"product": "auto", "suspended": 1},
        "wa_4": {"product": "search", "shadow": 1, "pm": 3},
        "wa_5": {"product": "auto", "pm": 2, "ph": 3},
    }
    for app, fields in apps.items():
        r.hset(f"cg:{{wa}}:a:{app}", mapping=fields)
    r.hset("cg:{we}:ws", mapping={
        "type": "enterprise", "u:auto": "session", "p:auto": 50_000, "l:auto": "2,100,1000",
        "u:search": "query", "p:search": 1_000, "lowt": 10,
    })  # fmt: skip
    r.hset("cg:{wl}:ws", mapping={
        "type": "standard", "free": 80_000, "free_exp": T0 + 1000, "pool": 50_000,
        "free_granted": 1, "u:auto": "session", "p:auto": 50_000, "low": 1,
    })  # fmt: skip
    r.hset("cg:{wl}:a:wl_1", mapping={"product": "auto"})
    r.hset("cg:{we}:a:we_1", mapping={"product": "auto"})
    r.hset("cg:{we}:a:we_2", mapping={"product": "search"})


def m(app: str, user: str, token: str, key: str = "", kind: str = "m", digest: str = "") -> str:
    ch = "slack" if key else "web"
    tail = f"\t{digest}" if digest or key else ""
    return f"{app}\t{ch}\t{user}\t{key}\t{token}\t{kind}{tail}"


def workload() -> Iterator[tuple[str, int, str, list[str]]]:
    """(workspace, now, order, admissions) per call."""
    t = T0
    yield "wa", t, "f", [m("wa_1", "u1", "a1"), m("wa_1", "u2", "a2"), m("wa_2", "u1", "a3"),
                         m("wa_9", "u1", "a4"), "bad",
                         m("wa_1", "u3", "a5", "k0", "c")]  # fmt: skip
    yield "wa", t, "f", [m("wa_1", "u1", "a1")]  # the same call again (a retry)
    yield "wa", t + 1000, "f", [m("wa_1", "u1", "b1")]
    yield "wa", t + 2000, "f", [m("wa_1", "u1", "b2", "k1", digest="ab12"),
                                m("wa_1", "u2", "b3", LONG, digest="cd34")]  # fmt: skip
    yield "wa", t + 3000, "f", [m("wa_1", "u1", "b4", "k1", digest="ab12"),
                                m("wa_1", "u1", "b4", "k1", digest="ab12"),
                                m("wa_1", "u2", "b5", LONG, digest="ffff"),
                                m("wa_1", "u1", "b2", "k1", digest="ab12")]  # fmt: skip
    yield "wa", t + 3500, "f", [m("wa_1", "u1", f"c{i}", f"f{i}", digest="aa") for i in range(5)]
    yield "wa", t + 4000, "f", [m("wa_3", "u1", "d1"), m("wa_3", "u1", "d1"),
                                m("wa_5", "u1", "d2"), m("wa_5", "u1", "d3"),
                                m("wa_5", "u1", "d4"), m("wa_5", "u2", "d5")]  # fmt: skip
    yield "wa", t + 5000, "f", [m("wa_4", "u1", f"e{i}") for i in range(5)]
    yield "wa", t + 6000, "f", [m("wa_1", "u4", "f1", kind="n"), m("wa_1", "u1", "f2", kind="c"),
                                m("wa_1", "u9", "f3", kind="c"), m("wa_2", "u1", "f4", kind="M"),
                                m("wa_5", "u1", "f5", kind="N")]  # fmt: skip
    yield "wa", t + 7000, "f", [m("wa_2", f"g{i}", f"g{i}") for i in range(4)]
    yield "wa", t + 8000, "p", [m("wa_1", f"h{i}", f"h{i}") for i in range(4)]
    yield "wa", t + 9000, "f", [m("wa_1", f"i{i}", f"i{i}") for i in range(6)]
    yield "wa", t + BLOCK + 500, "f", [m("wa_1", "u1", "j1"), m("wa_1", "u2", "j2")]
    yield "wa", t + 2_100_000, "f", [m("wa_1", "u1", "k1"), m("wa_5", "u1", "k2")]
    yield "wa", t + 5_000_000, "f", [m("wa_1", "u1", "l1"), m("wa_1", "u5", "l2", kind="c")]
    yield "wa", t + 5_000_100, "f", [m("wa_1", "u1", "l3")]
    yield "we", t, "f", [m("we_1", "u1", "n1"), m("we_1", "u2", "n2"), m("we_1", "u3", "n3"),
                         m("we_2", "u1", "n4"), m("we_1", "u1", "n5")]  # fmt: skip
    yield "we", t + 1000, "f", [m("we_1", "u1", "o1")]
    yield "wl", t, "f", [m("wl_1", "u1", "p1")]
    yield "wl", t + 2000, "f", [m("wl_1", "u2", "p2"), m("wl_1", "u3", "p3")]


def keyspace(r: redis.Redis) -> dict[bytes, Any]:
    """Every key: its type, encoding and value (a listpack's fields in their order; a
    hashtable's order is its process's hash seed, so as a dict), and whether it expires."""
    found: dict[bytes, Any] = {}
    for k in sorted(r.keys("*")):
        kind, enc = r.type(k), r.object("encoding", k)
        value: Any
        if kind == b"hash":
            fields = r.hgetall(k)  # a dict in the hash's order
            value = list(fields.items()) if enc == b"listpack" else fields
        elif kind == b"zset":
            value = r.zrange(k, 0, -1, withscores=True)
        elif kind == b"list":
            value = r.lrange(k, 0, -1)
        else:
            value = r.get(k)
        found[k] = (kind, enc, value, r.pttl(k) >= 0)
    return found


def expiries(r: redis.Redis) -> dict[bytes, int]:
    return {k: int(r.execute_command("PEXPIRETIME", k)) for k in sorted(r.keys("*"))}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    if shutil.which("git") is None:
        pytest.skip("git is needed to read the reference admit.lua")
    old, new = start_redis(tmp_path / "old"), start_redis(tmp_path / "new")
    yield old, new
    old.kill()
    new.kill()


def loaded(servers: tuple[RedisServer, RedisServer]) -> tuple[list[redis.Redis], list[str]]:
    """A client of each server, both seeded, and the sha of the reference admit.lua
    loaded on the first and of today's on the second."""
    clients = [redis.Redis(port=s.port) for s in servers]
    shas = []
    for r, src in zip(clients, (reference_source(), lua_source("admit")), strict=True):
        seed(r)
        shas.append(r.script_load(src))
    return clients, shas


def test_admit_lua_answers_and_writes_as_the_reference(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    clients, shas = loaded(servers)
    codes: set[int] = set()
    spent = 0  # ms between the same call on the two servers, all calls together
    for step, (ws, now, order, admissions) in enumerate(workload()):
        started = time.time()
        heads = (head(now, order), [*head(now, order), USAGE_FIELDS])
        replies = [
            r.evalsha(sha, 2, f"cg:{{{ws}}}", f"cg:{{{ws}}}:~", *h, *admissions)
            for r, sha, h in zip(clients, shas, heads, strict=True)
        ]
        spent += int((time.time() - started) * 1000) + 2
        assert replies[1] == replies[0], f"call {step}"
        codes.update(int(v) % 16 for v in replies[0][::3])
        assert keyspace(clients[1]) == keyspace(clients[0]), f"call {step}"
        old, new = expiries(clients[0]), expiries(clients[1])
        assert old.keys() == new.keys()
        for k, at in old.items():
            assert (at < 0) == (new[k] < 0), (step, k)
            assert abs(new[k] - at) <= spent, (step, k)
    assert codes == set(range(10)), codes  # the workload reaches every code
    events = {json.loads(e)["type"] for e in clients[0].lrange("cg:{wa}:ev", 0, -1)}
    for ws in ("we", "wl"):
        events |= {json.loads(e)["type"] for e in clients[0].lrange(f"cg:{{{ws}}}:ev", 0, -1)}
    assert events == {
        "app.inactive", "balance.low", "free_credits.exhausted", "free_credits.expired",
        "paid_balance.zero", "usage_limit.reached",
    }  # fmt: skip


def test_past_the_usage_fields_a_refusal_on_a_new_channel_is_counted_as_overflow(
    servers: tuple[RedisServer, RedisServer],
) -> None:
    """The one intended difference from the reference: with ARGV[18] = 4, refusals (wa_3
    is suspended) on ever new channel names stop adding fields once the bucket holds 4;
    each is counted under channel "(overflow)" instead, so the bucket's sums are the
    reference's. A refusal keeps its channel where the field exists already, or where the
    channel admitted something in the bucket (wa_5's third message, over its minute
    limit). Replies and every other key are the reference's."""
    clients, shas = loaded(servers)
    calls = [
        [m("wa_1", "u1", "q1"), "wa_3\tch0\tu1\t\tq2\tm"],  # 3 fields + 1
        *[[f"wa_3\tch{i}\tu1\t\tq{i + 9}\tm"] for i in range(1, 8)],
        [m("wa_5", f"u{i}", f"r{i}") for i in range(3)],
        ["wa_3\tch0\tu1\t\tq20\tm"],
    ]
    for admissions in calls:
        heads = (head(T0), [*head(T0), 4])
        replies = [
            r.evalsha(sha, 2, "cg:{wa}", "cg:{wa}:~", *h, *admissions)
            for r, sha, h in zip(clients, shas, heads, strict=True)
        ]
        assert replies[1] == replies[0]
    old, new = keyspace(clients[0]), keyspace(clients[1])
    agk = f"cg:{{wa}}:ag:{T0 // 60_000 * 60}".encode()
    assert {k: v for k, v in old.items() if k != agk} == {k: v for k, v in new.items() if k != agk}
    fields = [{k.decode(): int(v) for k, v in dict(ks[agk][2]).items()} for ks in (old, new)]
    refusals = [{k: v for k, v in f.items() if "\tr:" in k} for f in fields]
    suspended = "\tauto\tsession\tr:app_suspended"
    limited = {"wa_5\tweb\tauto\tsession\tr:rate_limited": 1}
    assert (
        refusals[0]
        == {f"wa_3\tch{i}{suspended}": 1 for i in range(1, 8)}
        | {f"wa_3\tch0{suspended}": 2}
        | limited
    )
    assert refusals[1] == {f"wa_3\tch0{suspended}": 2, f"wa_3\t(overflow){suspended}": 7} | limited
    admitted = [{k: v for k, v in f.items() if "\tr:" not in k} for f in fields]
    assert admitted[1] == admitted[0]
