"""Proxy throughput on one machine, over loopback, at a fixed concurrency (wrk).

Contestants, all in front of the same bot:

* nginx ``proxy_pass`` (1 and all workers) - the ceiling for a proxy;
* ``bench/naive_proxy.py`` - aiohttp with one unbatched EVALSHA per request;
* creditgate with metering off (``CREDITGATE_METERING=off``) and on, 1 and all workers,
  on each traffic server (``aiohttp``, and ``fast``: the httptools path);
* creditgate 1 worker, metering off and on, paced at half the unmetered max rate (hey),
  for the p99 that metering adds below saturation (each traffic server);
* creditgate metered 1 worker with Python's default garbage collection (``GC_FREEZE``
  off, generation-0 threshold 700): the effect of the workers' GC settings;
* ``--baseline REF``: a previous release, built from that git ref into a temporary venv,
  metered, 1 worker.

For each creditgate contestant it also reports the CPU time of its processes per request
(from /proc), the garbage collector's time per request (``creditgate_gc_seconds_total``,
timed with ``gc.callbacks`` in the workers) and, metered, the mean admission latency and
batch size (from /metrics). For every contestant, the CPU the shared ``redis-server``
spent per request (``INFO cpu``): what metering costs beside the gateway's own
processes (zero for the unmetered ones). ``--only REGEX`` runs the contestants whose
name matches.

The bot is an nginx ``return 200`` on its own port (so the bot is never the bottleneck);
Redis is a throwaway ``redis-server``. Each message comes from one channel user, so
after the first one every admission runs the whole admit.lua path but opens no new
session (rate limits raised out of the way); ``--users N`` draws each wrk request's user
at random from N, so new users open (and pay for) billing sessions as real traffic
does. Prints one table. One round is noisy on a shared machine: ``--rounds N`` runs
every contestant N times, rounds alternating, and reports each ratio as the median of
the rounds' ratios with every round's value beside it.

``--pin K`` confines each contestant to the first K CPUs and everything else (wrk, hey,
the bot, Redis) to the rest, as a many-core measurement would; without it all share
every CPU.

    .venv/bin/python -m bench.proxy [--duration 10] [--connections 64] [--users 1]
        [--only REGEX] [--baseline REF] [--rounds 1] [--pin K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.wrk_tools import (
    BOT_BODY,
    HOST,
    PROXY_BODY,
    Result,
    nginx,
    paced,
    process,
    redis_cpu_s,
    scrape,
    tree_cpu_s,
    wrk,
)
from tests.support.servers import free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
CREDITGATE = str(Path(sys.executable).parent / "creditgate")

WS = "benchws"
APP = f"{WS}_app1"


async def seed(redis_url: str, bot_url: str) -> None:
    from config import load_catalog, load_settings
    from meter.accounts import projection
    from meter.redis_layer.client import connect

    settings = load_settings(env={}, redis_url=redis_url)
    client = connect(redis_url)
    try:
        await projection.put_workspace(client, WS, plan="standard", catalog=load_catalog())
        await projection.put_app(
            client, APP, product="automation", upstream_url=bot_url,
            per_minute=10**9, per_hour=10**9,
        )  # fmt: skip
        await projection.grant(
            client, WS, reference="bench", kind="funds", amount=10**15,
            low_threshold=settings.low_balance_threshold,
        )  # fmt: skip
    finally:
        await client.aclose()


def gateway_env(
    redis_url: str,
    port: int,
    workers: int,
    metering: bool,
    tmp: Path,
    admin_port: int = 0,
    server: str = "aiohttp",
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        CREDITGATE_REDIS_URL=redis_url,
        CREDITGATE_STORE_URL=f"sqlite:///{tmp}/bench.db",
        CREDITGATE_HOST=HOST,
        CREDITGATE_TRAFFIC_PORT=str(port),
        CREDITGATE_ADMIN_PORT=str(admin_port or free_port()),
        CREDITGATE_STATE_DIR=str(tmp / f"state-{port}"),
        CREDITGATE_EGRESS_ALLOW="127.0.0.0/8",
        CREDITGATE_WORKERS=str(workers),
        CREDITGATE_LOG_LEVEL="WARNING",
        CREDITGATE_METERING="on" if metering else "off",
        CREDITGATE_TRAFFIC_SERVER=server,
        # the GC's time reaches /metrics within a flush
        CREDITGATE_METRICS_FLUSH_S="0.2",
    )
    return env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per contestant")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--users",
        type=int,
        default=1,
        help="channel users drawn at random per request (wrk runs; 1: every message from "
        "one user, so all but the first are inside its paid billing session)",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="git ref of a previous release to run as a contestant (metered, 1 worker)",
    )
    parser.add_argument(
        "--baseline-server",
        choices=("aiohttp", "fast"),
        default="aiohttp",
        help="TRAFFIC_SERVER of the --baseline contestant (fast: a ref that has the fast "
        "path, to compare this tree's fast path with it)",
    )
    parser.add_argument("--only", default="", help="run only contestants matching this regex")
    parser.add_argument(
        "--pin",
        type=int,
        default=0,
        metavar="K",
        help="confine each contestant to the first K CPUs and wrk, hey, the bot and Redis "
        "to the others (the 'all workers' contestants and the bot then run K workers); 0: no "
        "pinning",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every contestant this many times, rounds alternating; the table shows each "
        "contestant's median run and each ratio the median of the rounds' ratios (a shared "
        "machine drifts: a ratio within one round compares runs minutes apart, not hours)",
    )
    return parser.parse_args()


@dataclass
class Bench:
    """The contestants, run one after the other against one bot and one Redis."""

    args: argparse.Namespace
    tmp: Path
    redis_url: str
    bot_port: int
    all_workers: int
    cpus: frozenset[int] = frozenset()  # the contestants' CPUs (--pin), or all
    results: list[Result] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # contestants answered with errors
    baseline_bin: str = ""
    baseline_knows: frozenset[str] = frozenset()  # of the settings an older one may lack

    @property
    def path(self) -> str:
        return f"/hooks/web/{APP}/chat"

    def wanted(self, name: str) -> bool:
        """Whether ``--only`` selects the contestant ``name`` (all without it)."""
        return not self.args.only or re.search(self.args.only, name) is not None

    def run(
        self,
        name: str,
        port: int,
        proc: subprocess.Popen[bytes] | None = None,
        admin: str = "",
    ) -> None:
        """One wrk run (after a warm-up), with the process's CPU and /metrics figures."""
        if not self.wanted(name):
            return
        args, url = self.args, f"http://{HOST}:{port}{self.path}"
        try:
            wrk(name, url, 2, args.connections, args.users)  # warm-up
            cpu0 = tree_cpu_s(proc.pid) if proc else 0.0
            m0 = scrape(admin) if admin else {}
            redis0 = redis_cpu_s(self.redis_url)
            r = wrk(name, url, args.duration, args.connections, args.users)
            redis1 = redis_cpu_s(self.redis_url)
        except RuntimeError as exc:  # error answers: no row, said under the table
            self.failed.append(str(exc).splitlines()[0])
            print(f"  {self.failed[-1]}", file=sys.stderr)
            return
        r.redis_us = (redis1 - redis0) / (r.rps * args.duration) * 1e6
        if proc is not None:
            r.cpu_us = (tree_cpu_s(proc.pid) - cpu0) / (r.rps * args.duration) * 1e6
        if admin:
            time.sleep(0.5)  # the workers' last metric flush
            m1 = scrape(admin)
            d = {k: m1[k] - m0[k] for k in m1}
            done = r.rps * args.duration
            r.gc_us = d["creditgate_gc_seconds_total"] / done * 1e6
            n = d["creditgate_admission_seconds_count"] or float("nan")
            r.admit_ms = d["creditgate_admission_seconds_sum"] / n * 1000
            calls = d["creditgate_admission_batch_size_count"] or float("nan")
            r.batch = d["creditgate_admission_batch_size_sum"] / calls
        self.results.append(r)
        print(f"  {name}: {self.results[-1].rps:,.0f} req/s", file=sys.stderr)

    def nginx_proxies(self) -> None:
        for w in sorted({1, self.all_workers}):  # one run when --pin 1
            port = free_port()
            with nginx(self.tmp, port, w, PROXY_BODY, f"{HOST}:{self.bot_port}", self.cpus):
                self.run(f"nginx proxy_pass {w}w", port)

    def naive(self) -> None:
        port = free_port()
        bot = f"http://{HOST}:{self.bot_port}"
        naive = [sys.executable, "-m", "bench.naive_proxy",
                 "--port", str(port), "--redis", self.redis_url, "--upstream", bot]  # fmt: skip
        with process(naive, port, cpus=self.cpus) as proc:
            self.run("naive aiohttp+EVALSHA 1w", port, proc)

    def creditgate(self, server: str, prefix: str) -> None:
        """Metering off and on, 1 and all workers; 1 worker again paced at half the
        unmetered max rate (hey), for the latency below saturation."""
        half = 0.0
        for metering in (False, True):
            for w in sorted({1, self.all_workers}):  # one run when --pin 1
                label = "on" if metering else "off"
                name = f"{prefix} metering {label} {w}w"
                if not self.wanted(name):
                    continue
                port, admin_port = free_port(), free_port()
                env = gateway_env(self.redis_url, port, w, metering, self.tmp, admin_port, server)
                with process([CREDITGATE, "serve"], port, env, self.cpus) as proc:
                    self.run(name, port, proc, f"http://{HOST}:{admin_port}")
                    if w != 1:
                        continue
                    # Latency below saturation: both at half the unmetered max.
                    half = half or self.results[-1].rps / 2
                    paced_name = f"{prefix} metering {label} 1w @{half:,.0f}/s"
                    if not self.wanted(paced_name):
                        continue
                    self.results.append(paced(paced_name, f"http://{HOST}:{port}{self.path}",
                                              self.args.duration, half))  # fmt: skip

    def default_gc(self) -> None:
        port, admin_port = free_port(), free_port()
        env = gateway_env(self.redis_url, port, 1, True, self.tmp, admin_port)
        env.update(CREDITGATE_GC_FREEZE="off", CREDITGATE_GC_THRESHOLD="700")
        name = "creditgate on 1w, default GC"
        if self.wanted(name):
            with process([CREDITGATE, "serve"], port, env, self.cpus) as proc:
                self.run(name, port, proc, f"http://{HOST}:{admin_port}")

    def baseline(self, ref: str, server: str = "aiohttp") -> None:
        if not self.baseline_bin:  # built once, for every round
            self.baseline_bin, self.baseline_knows = build_baseline(ref, self.tmp)
        old = self.baseline_bin
        port, admin_port = free_port(), free_port()
        env = gateway_env(self.redis_url, port, 1, True, self.tmp, admin_port, server)
        for name in ("CREDITGATE_STATE_DIR", "CREDITGATE_EGRESS_ALLOW"):
            if name not in self.baseline_knows:  # an older release refuses what it lacks
                env.pop(name)
        with process([old, "serve"], port, env, self.cpus) as proc:
            self.run(f"release {ref} on 1w", port, proc)


def main() -> None:
    args = parse_args()
    for tool in ("nginx", "wrk", "hey", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/proxy.py needs {tool}: run `make bench` (installs nginx, wrk, hey)")
    all_workers = os.cpu_count() or 2
    cpus: frozenset[int] = frozenset()
    if args.pin:
        mine = sorted(os.sched_getaffinity(0))
        if not 0 < args.pin < len(mine):
            sys.exit(f"--pin {args.pin}: needs 1 to {len(mine) - 1} of the {len(mine)} CPUs")
        # This process and all it starts (Redis, the bot, wrk, hey) take the rest.
        cpus, all_workers = frozenset(mine[: args.pin]), args.pin
        os.sched_setaffinity(0, mine[args.pin :])
    with tempfile.TemporaryDirectory(prefix="creditgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = start_redis(tmp / "redis")
        bench = Bench(args, tmp, redis.url, free_port(), all_workers, cpus)
        rounds: list[list[Result]] = []
        try:
            with nginx(tmp, bench.bot_port, all_workers, BOT_BODY, f"{HOST}:{bench.bot_port}"):
                asyncio.run(seed(redis.url, f"http://{HOST}:{bench.bot_port}"))
                for n in range(args.rounds):
                    if args.rounds > 1:
                        print(f"round {n + 1} of {args.rounds}", file=sys.stderr)
                    bench.results = []
                    bench.nginx_proxies()
                    bench.naive()
                    for server, prefix in (("aiohttp", "creditgate"), ("fast", "creditgate fast")):
                        bench.creditgate(server, prefix)
                    bench.default_gc()
                    if args.baseline:
                        bench.baseline(args.baseline, args.baseline_server)
                    rounds.append(bench.results)
        finally:
            redis.stop()
    print_table(rounds, all_workers, args)
    for failure in bench.failed:
        print(f"not measured: {failure}")


def median_runs(rounds: list[list[Result]]) -> list[Result]:
    """Each contestant's run of median req/s (the lower middle one of an even count); a
    paced contestant is one whatever its rate in that round."""
    runs: dict[str, list[Result]] = {}
    for results in rounds:
        for r in results:
            runs.setdefault(re.sub(r" @[\d,]+/s$", " @", r.name), []).append(r)
    return [sorted(rs, key=lambda r: r.rps)[(len(rs) - 1) // 2] for rs in runs.values()]


def build_baseline(ref: str, tmp: Path) -> tuple[str, frozenset[str]]:
    """``creditgate`` of git ref ``ref``, installed into a temporary venv, and which of
    the settings that older releases lack it has (an unknown setting is refused)."""
    src, venv = tmp / "baseline-src", tmp / "baseline-venv"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), ref],
                   check=True, capture_output=True)  # fmt: skip
    try:
        # config/settings.py, or since the split into groups config/groups/*.py
        fields = "".join(p.read_text() for p in sorted((src / "config").rglob("*.py")))
        knows = frozenset(f"CREDITGATE_{name.upper()}" for name in ("state_dir", "egress_allow")
                          if f"{name}:" in fields)  # fmt: skip
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(src)], check=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)],
                       check=False, capture_output=True)  # fmt: skip
    return str(venv / "bin" / "creditgate"), knows


def paced_p99(by: dict[str, Result], prefix: str, label: str) -> float:
    """p99 of the paced 1-worker run of ``prefix`` with metering ``label``; nan if none."""
    start = f"{prefix} metering {label} 1w @"
    return next((r.p99_ms for name, r in by.items() if name.startswith(start)), float("nan"))


def print_table(rounds: list[list[Result]], all_workers: int, args: argparse.Namespace) -> None:
    results = median_runs(rounds)
    users = f", {args.users:,} random users" if args.users > 1 else ""
    median = f", median of {len(rounds)} rounds" if len(rounds) > 1 else ""
    pinned = ""
    if args.pin:
        pinned = f" (contestants on {args.pin}, wrk, hey, bot and Redis on the others)"
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s{users}, loopback, "
          f"{os.cpu_count()} CPUs{pinned}, bot = nginx return 200{median}\n")  # fmt: skip
    print(f"| {'contestant':<34} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} "
          f"| {'CPU us/req':>10} | {'GC us/req':>9} | {'admit ms':>8} "
          f"| {'batch':>6} | {'redis us/req':>12} |")  # fmt: skip
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 10}"
          f"|{'-' * 8}|{'-' * 14}|")  # fmt: skip
    for r in results:
        print(f"| {r.name:<34} | {r.rps:>9,.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} "
              f"| {r.cpu_us:>10.0f} | {r.gc_us:>9.1f} | {r.admit_ms:>8.2f} "
              f"| {r.batch:>6.1f} | {r.redis_us:>12.1f} |")  # fmt: skip
    print()

    bys = [{r.name: r for r in results} for results in rounds]

    def show(label: str, values: list[float], fmt: str, unit: str = "") -> None:
        """The median of the rounds' values, then each round's when there are several."""
        if not values:
            return
        values = sorted(values)
        mid = format(values[(len(values) - 1) // 2], fmt)
        each = ", ".join(format(v, fmt) for v in values)
        print(f"{label}: {mid}{unit}" + (f" (rounds: {each})" if len(values) > 1 else ""))

    def ratio(label: str, a: str, b: str) -> None:
        show(label, [by[a].rps / by[b].rps for by in bys if a in by and b in by], ".2f")

    for prefix in ("creditgate", "creditgate fast"):
        for w in sorted({1, all_workers}):
            ratio(
                f"{prefix}: metered / unmetered, {w} worker(s)",
                f"{prefix} metering on {w}w",
                f"{prefix} metering off {w}w",
            )
        ratio(
            f"{prefix}: metered 1w / naive", f"{prefix} metering on 1w", "naive aiohttp+EVALSHA 1w"
        )
        if args.baseline:
            ratio(
                f"{prefix}: metered 1w / release {args.baseline}",
                f"{prefix} metering on 1w",
                f"release {args.baseline} on 1w",
            )
        added = [paced_p99(by, prefix, "on") - paced_p99(by, prefix, "off") for by in bys]
        show(
            f"{prefix}: p99 added by metering at half the max rate (hey)",
            [ms for ms in added if ms == ms],  # nan: not paced in that round
            "+.2f",
            " ms",
        )
    ratio(
        "fast / aiohttp, metered 1w", "creditgate fast metering on 1w", "creditgate metering on 1w"
    )
    ratio("metered 1w / default GC", "creditgate metering on 1w", "creditgate on 1w, default GC")
    # A paced run that fell short of its rate was saturated: its latency is not the
    # latency below saturation the p99 row is meant to show.
    short = [
        f"round {n}: {r.name} served {r.rps:,.0f} of {r.paced_at:,.0f} req/s"
        for n, results in enumerate(rounds, 1)
        for r in results
        if r.rps < 0.95 * r.paced_at
    ]
    if short:
        print("paced runs short of their rate (their p99 is not below saturation):")
        print("\n".join(f"  {line}" for line in short))


if __name__ == "__main__":
    main()
