"""Admission throughput and Redis memory per live billing session, from one run.

Starts its own redis-server on a free loopback port (tests/servers.py), seeds standard
workspaces with one session-unit app each (credit and rate limits far from binding), and
prints one table:

* admissions/s of one Python process (uvloop) through ``Admitter``: batched (many
  concurrent admissions, default ``batch_max``), the same with
  ``redis_durability=replicated`` (``WAIT 1`` on a replica it starts), and one call per admission
  (``batch_max=1``) awaited serially and with concurrency; with the CPU time each side
  spent per admission (the machine may be shared: CPU per admission is the steadier figure);
* the EVALSHA ceiling of the same Redis measured by ``redis-benchmark``: a trivial
  script, ``admit.lua`` with one admission and with a batch of admissions;
* Redis memory per live billing session: ``used_memory`` delta / N after N distinct users
  opened one, then each part's share (deleting the parts one by one), with ``MEMORY USAGE``
  of a sample key or record.

It first checks exactness: 2,000 concurrent users against credit for exactly 1,500
sessions must give exactly 1,500 admissions.

Throughput workload: messages of one automation app per workspace, a tenth of them from a
new user (opening a charged billing session), the rest inside an open one.

    .venv/bin/python -m bench.admission [--n 200000] [--sessions 100000] [--profile]
    .venv/bin/python -m bench.admission --small-batches   # CPU per admission, 2/8/32 callers
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench.wrk_tools import redis_cpu_s
from config import Settings, load_catalog, load_settings
from meter.accounts import projection
from meter.admission.admitter import Admitter
from meter.admission.decision import Decision
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.redis_layer.scripts import lua_source
from tests.support.servers import RedisServer, start_redis

USD = 1_000_000
PRICE = 200_000  # standard session price
BIG = 10**12
NOW = 1_800_000_000.0


def bench_settings(**overrides: object) -> Settings:
    # A generous Redis timeout: this measures throughput, and on a shared machine one call
    # can stall past the production 0.5 s without anything being wrong.
    return load_settings(env={}, redis_timeout_s=5.0, **overrides)


async def seed(client: RedisClient, cfg: Settings, spaces: int, funds: int = BIG) -> list[str]:
    """Fresh Redis with ``spaces`` standard workspaces, one automation app each."""
    await client.flushall()
    catalog, apps = load_catalog(), []
    for w in range(spaces):
        ws = f"bench{w:04d}"
        app = f"{ws}_app1"
        await projection.put_workspace(client, ws, plan="standard", catalog=catalog)
        await projection.put_app(client, app, product="automation", per_minute=BIG, per_hour=BIG)
        await projection.grant(
            client,
            ws,
            reference="funds",
            kind="funds",
            amount=funds,
            low_threshold=cfg.low_balance_threshold,
        )
        apps.append(app)
    return apps


def workload(apps: list[str], n: int) -> list[tuple[str, str]]:
    """``n`` messages, a tenth of them from new users: (app, user), apps interleaved."""
    users = max(1, n // len(apps) // 10)
    return [(apps[i % len(apps)], f"user{(i // len(apps)) % users}") for i in range(n)]


async def drive(
    admit: Callable[[str, str], Awaitable[Decision]],
    msgs: list[tuple[str, str]],
    concurrency: int,
) -> tuple[float, Counter[int]]:
    """Run ``msgs`` with ``concurrency`` callers each awaiting one admission at a time."""
    codes: Counter[int] = Counter()

    async def caller(part: list[tuple[str, str]]) -> None:
        for app, user in part:
            codes[(await admit(app, user)).code] += 1

    parts = [msgs[i::concurrency] for i in range(concurrency)]
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(p) for p in parts))
    return time.perf_counter() - t0, codes


@dataclass
class Rate:
    per_s: float
    py_us: float  # CPU of this process per admission
    redis_us: float  # CPU of redis-server per admission


async def throughput(
    server: RedisServer,
    n: int,
    concurrency: int,
    spaces: int,
    *,
    batch_max: int,
    inflight: int = 4,
    **overrides: object,
) -> Rate:
    cfg = bench_settings(batch_max=batch_max, **overrides)
    client = connect(server.url, max_connections=max(64, inflight))
    try:
        apps = await seed(client, cfg, spaces)
        adm = Admitter(client, cfg, max_inflight=inflight)
        await adm.admit(apps[0], "web", "warmup")  # loads the script
        msgs = workload(apps, n)
        cpu0, rcpu0 = time.process_time(), redis_cpu_s(server.url)
        elapsed, codes = await drive(lambda a, u: adm.admit(a, "web", u), msgs, concurrency)
        cpu1, rcpu1 = time.process_time(), redis_cpu_s(server.url)
        await adm.close()
        assert codes == Counter({0: n}), codes
        return Rate(n / elapsed, (cpu1 - cpu0) / n * 1e6, (rcpu1 - rcpu0) / n * 1e6)
    finally:
        await client.aclose()


async def exactness(server: RedisServer) -> Counter[int]:
    """2,000 concurrent new users, credit for exactly 1,500 sessions."""
    cfg = bench_settings()
    client = connect(server.url)
    try:
        apps = await seed(client, cfg, 1, funds=1_500 * PRICE)
        adm = Admitter(client, cfg)
        _, codes = await drive(
            lambda a, u: adm.admit(a, "web", u), [(apps[0], f"u{i}") for i in range(2_000)], 2_000
        )
        left = (await projection.read_balances(client, "bench0000")).pool
        assert codes == Counter({0: 1_500, 6: 500}), (codes, left)
        assert left == 0, (codes, left)
        return codes
    finally:
        await client.aclose()


# -- redis-benchmark --------------------------------------------------------------------------


def redis_benchmark(port: int, n: int, *args: str, clients: int = 50, rnd: int = 0) -> float:
    cmd = ["redis-benchmark", "-p", str(port), "-n", str(n), "-c", str(clients), "--csv"]
    if rnd:
        cmd += ["-r", str(rnd)]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line and not line.startswith('"test"')]
    return float(rows[-1].split(",")[1].strip('"'))


def ceilings(server: RedisServer, batch: int, session_calls: int = 400) -> dict[str, float]:
    """EVALSHA calls/s that redis-benchmark (50 clients) gets from this Redis."""
    cfg = bench_settings()

    async def prepare() -> list[str]:
        client = connect(server.url)
        await seed(client, cfg, 1)
        adm = Admitter(client, cfg)  # for the ARGV head it sends
        await client.aclose()
        return [str(v) for v in adm.argv_head(NOW)]

    head = asyncio.run(prepare())
    port = server.port
    trivial = str(server.command("SCRIPT", "LOAD", "return 1"))
    admit = str(server.command("SCRIPT", "LOAD", lua_source("admit")))
    # redis-benchmark puts a random number for each __rand_int__: every message is a new
    # user (so each admission opens and charges a billing session, the costly path).
    call = ["EVALSHA", admit, "2", *keys.ws_keys("bench0000"), *head]
    msg = "bench0000_app1\tweb\tu__rand_int__\t\tt__rand_int__\tm"
    out = {"trivial": redis_benchmark(port, 200_000, "EVALSHA", trivial, "0")}
    out["admit1"] = redis_benchmark(port, 50_000, *call, msg, rnd=10**9)
    server.command("FLUSHALL")
    asyncio.run(prepare())
    out["admitN"] = redis_benchmark(port, 200, *call, *([msg] * batch), rnd=10**9) * batch
    # The common message: inside a billing session that is already paid. 1,000 users open
    # theirs first; then every message is one of theirs (no debit, no new record).
    server.command("FLUSHALL")
    asyncio.run(prepare())
    for i in range(0, 1000, batch):
        opening = [f"bench0000_app1\tweb\tu{j:012d}\t\to{j}\tm" for j in range(i, i + batch)]
        server.command("EVALSHA", admit, "2", *keys.ws_keys("bench0000"), *head, *opening)
    inside = "bench0000_app1\tweb\tu__rand_int__\t\tt__rand_int__\tm"
    out["admitN_session"] = (
        redis_benchmark(port, session_calls, *call, *([inside] * batch), rnd=1000) * batch
    )
    return out


# -- memory -------------------------------------------------------------------------------------


async def used(client: RedisClient) -> int:
    return int((await client.info("memory"))["used_memory"])


async def delete_matching(client: RedisClient, pattern: str) -> None:
    found = [k async for k in client.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(found), 1000):
        await client.delete(*found[i : i + 1000])  # DEL frees now; UNLINK may defer


async def memory(server: RedisServer, sessions: int) -> dict[str, float]:
    """Bytes per live billing session: in all, then each part (deleting one at a time)."""
    cfg = bench_settings()
    client = connect(server.url)
    try:
        app = (await seed(client, cfg, 1))[0]
        ws = "bench0000"
        adm = Admitter(client, cfg)
        await adm.admit(app, "web", "warmup")
        before = await used(client)
        users = [(app, f"user{i:07d}") for i in range(sessions)]
        _, codes = await drive(lambda a, u: adm.admit(a, "web", u), users, 1_000)
        assert codes == Counter({0: sessions}), codes
        p = keys.ws_prefix(ws)
        out = {"per_session": (await used(client) - before) / sessions}
        sample_ik = await anext(aiter(client.scan_iter(match=f"{p}:i:*", count=1000)))
        out["charge_usage"] = int(await client.memory_usage(sample_ik, samples=0) or 0)
        srk = [k async for k in client.scan_iter(match=f"{p}:sr:*")]
        rec_bytes = sum([int(await client.memory_usage(k, samples=0) or 0) for k in srk])
        out["record_usage"] = rec_bytes / max(1, sum([await client.hlen(k) for k in srk]))
        # Each used_memory drop as one part is deleted is that part's true cost.
        out["reservation_usage"] = int(
            await client.memory_usage(keys.reservations_key(ws), samples=0) or 0
        ) / max(1, int(await client.zcard(keys.reservations_key(ws))))
        for part, pattern in (
            ("reservation", keys.reservations_key(ws)),
            ("charge", f"{p}:i:*"),
            ("record", f"{p}:sr:*"),
        ):
            ahead = await used(client)
            await delete_matching(client, pattern)
            out[part] = (ahead - await used(client)) / sessions
        out["resident"] = out["per_session"] - out["charge"] - out["reservation"]
        return out
    finally:
        await client.aclose()


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="admissions in the batched run")
    ap.add_argument("--concurrency", type=int, default=2_000)
    ap.add_argument("--workspaces", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=100_000, help="for the memory figure")
    ap.add_argument("--profile", action="store_true", help="only cProfile the batched run")
    ap.add_argument(
        "--lua-only",
        action="store_true",
        help="only the redis-benchmark rows of admit.lua (a few seconds)",
    )
    ap.add_argument("--session-calls", type=int, default=400, help="in-session calls of 256")
    ap.add_argument(
        "--small-batches",
        action="store_true",
        help="only CPU per admission with 2, 8 and 32 callers (the batches of moderate load)",
    )
    opt = ap.parse_args()
    if opt.small_batches:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_redis(Path(tmp) / "master")
            try:
                uvloop.run(small_batches(server, min(opt.n, 20_000)))
            finally:
                server.stop()
        return
    if opt.lua_only:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_redis(Path(tmp) / "master")
            try:
                lua_rows(server, opt)
            finally:
                server.stop()
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp) / "master")
        replica = start_redis(
            Path(tmp) / "replica", extra_args=["--replicaof", "127.0.0.1", str(server.port)]
        )
        while "master_link_status:up" not in str(replica.command("INFO", "replication")):
            time.sleep(0.1)  # the first sync waits for the master's bgsave
        try:
            run(server, opt)
        finally:
            replica.stop()
            server.stop()


async def small_batches(server: RedisServer, n: int, rounds: int = 3) -> None:
    """CPU per admission when few callers share a call (a gateway below saturation):
    the per-call cost (encoding, one write, one read) shows here, hidden in big batches.
    Best of ``rounds`` (the steadier figure on a shared machine)."""
    print(f"{n:,} admissions, one workspace, best of {rounds}")
    print("| callers |  adm/s | py us/adm | redis us/adm |")
    print("|---------|--------|-----------|--------------|")
    for callers in (2, 8, 32):
        runs = [await throughput(server, n, callers, 1, batch_max=256) for _ in range(rounds)]
        best = min(runs, key=lambda r: r.py_us)
        print(
            f"| {callers:7d} | {max(r.per_s for r in runs):6,.0f} "
            f"| {best.py_us:9.1f} | {best.redis_us:12.1f} |"
        )


def lua_rows(server: RedisServer, opt: argparse.Namespace) -> None:
    """The redis-benchmark rows alone, with the in-session rate over the trivial ceiling
    (the ratio is steadier than either figure on a shared machine)."""
    ceil = ceilings(server, 256, opt.session_calls)
    version = str(server.command("INFO", "server")).split("redis_version:")[1].split()[0]
    print(f"admit.lua under redis-benchmark (-c 50), redis {version}")
    print(f"  EVALSHA 'return 1'             {ceil['trivial']:>9,.0f} calls/s")
    print(f"  admit.lua, 1 new session       {ceil['admit1']:>9,.0f} calls/s")
    print(f"  admit.lua, 256 new sessions    {ceil['admitN']:>9,.0f} adm/s")
    print(f"  admit.lua, 256 in-session msgs {ceil['admitN_session']:>9,.0f} adm/s")
    print(f"  in-session / trivial ceiling   {ceil['admitN_session'] / ceil['trivial']:>9.2f}x")


def run(server: RedisServer, opt: argparse.Namespace) -> None:
    n, c, w = opt.n, opt.concurrency, opt.workspaces
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        if opt.profile:
            prof = cProfile.Profile()
            prof.enable()
            r.run(throughput(server, n, c, w, batch_max=256))
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue())
            return
        exact = r.run(exactness(server))
        batched = r.run(throughput(server, n, c, w, batch_max=256))
        replicated = r.run(
            throughput(server, n, c, w, batch_max=256, redis_durability="replicated")
        )
        serial = r.run(throughput(server, n // 20, 1, w, batch_max=1))
        conc4 = r.run(throughput(server, n // 10, c, w, batch_max=1, inflight=4))
        conc64 = r.run(throughput(server, n // 10, c, w, batch_max=1, inflight=64))
        mem = r.run(memory(server, opt.sessions))
    ceil = ceilings(server, 256)
    version = str(server.command("INFO", "server")).split("redis_version:")[1].split()[0]

    def rate(x: Rate) -> str:
        return f"{x.per_s:>9,.0f}/s  (CPU/adm: python {x.py_us:.1f} us, redis {x.redis_us:.1f} us)"

    def part(name: str) -> str:
        return f"{mem[name]:>9.0f} B  (MEMORY USAGE of one: {mem[name + '_usage']:.0f} B)"

    best_single = max(serial.per_s, conc4.per_s, conc64.per_s)
    session_rate = f"{ceil['admitN_session']:>9,.0f} adm/s"
    rows = [
        ("exactness: 2,000 users, credit for 1,500 sessions", f"{exact[0]:>9,} admitted"),
        ("batched: Admitter, batch_max 256, max_inflight 4", rate(batched)),
        ("  the same, redis_durability=replicated (WAIT 1)", rate(replicated)),
        ("  replicated / async", f"{replicated.per_s / batched.per_s:>9.2f}x"),
        ("one call per admission, awaited serially", rate(serial)),
        ("one call per admission, concurrent, 4 in flight", rate(conc4)),
        ("one call per admission, concurrent, 64 in flight", rate(conc64)),
        ("batched / serial one-call", f"{batched.per_s / serial.per_s:>9.1f}x"),
        ("batched / best one-call-per-admission", f"{batched.per_s / best_single:>9.1f}x"),
        ("redis-benchmark EVALSHA 'return 1' (-c 50)", f"{ceil['trivial']:>9,.0f}/s"),
        ("redis-benchmark EVALSHA admit.lua, 1 new session", f"{ceil['admit1']:>9,.0f}/s"),
        ("redis-benchmark admit.lua, 256 new sessions/call", f"{ceil['admitN']:>9,.0f} adm/s"),
        ("redis-benchmark admit.lua, 256 in-session msgs/call", session_rate),
        ("memory per live session (used_memory delta / N)", f"{mem['per_session']:>9.0f} B"),
        ("  reservation P:rsv (until forwarded, milliseconds)", part("reservation")),
        ("  charge record P:i (expires after refund TTL)", part("charge")),
        ("  session entry: state + record (P:sr hash field)", part("record")),
        ("resident per live session, past the refund TTL", f"{mem['resident']:>9.0f} B"),
    ]
    width = max(len(a) for a, _ in rows)
    print(
        f"admission bench: redis {version}, one Python process (uvloop), {w} workspaces, "
        f"n={n:,}, {c:,} concurrent callers, {opt.sessions:,} sessions for memory"
    )
    print(f"{'measure':<{width}}  value\n{'-' * width}  {'-' * 58}")
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


if __name__ == "__main__":
    main()
