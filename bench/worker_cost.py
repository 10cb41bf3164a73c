"""Instructions one traffic worker executes per message: a steady figure where CPU time
per request is noisy (on a shared machine bench/proxy.py's CPU us/req moves by ±20%
within minutes), measured under valgrind (callgrind), as bench/lua_cost.py does for
admit.lua.

Runs one traffic worker (:func:`gateway.worker.worker_main`, alone: no ``creditgate
serve`` parent) under ``valgrind --tool=callgrind`` with instrumentation off, in front
of bench/proxy.py's set-up (an nginx ``return 200`` bot, a throwaway ``redis-server``,
one app, every message from one channel user inside its paid billing session). After
``--warmup`` messages it switches instrumentation on (``callgrind_control -i on``),
sends ``--messages`` more, switches it off and reads the instructions counted: per
message, everything the worker did for them (parsing, admission, forwarding, the event
loop, the garbage collector), nothing of its start-up.

The client keeps ``--connections`` keep-alive connections busy, each sending its next
request when the previous answer is in. Under valgrind the worker runs some 50 times
slower than its client and Redis, so a request always waits on every connection: the
figure is that of a saturated worker, whose admissions batch by about the connection
count. Timing still moves it a little (batch sizes, loop passes): about ±0.5% run to
run at ``--connections 1`` and ±4% at 32 on a 2-core VM, against ±20% for CPU time;
``--rounds`` repeats every row and shows each value.

Rows: metering off and on, for this tree and, with ``--baseline REF``, for git ref
``REF`` (checked out into a temporary worktree and imported ahead of this tree, with
this venv: a ref whose dependencies differ needs its own). Rounds alternate the rows.

    .venv/bin/python -m bench.worker_cost [--messages 2000] [--rounds 1]   # ~40 s a round
    .venv/bin/python -m bench.worker_cost --baseline main --rounds 3       # ~4 min
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.proxy import APP, gateway_env, seed
from bench.wrk_tools import BOT_BODY, HOST, nginx, stop
from tests.support.servers import free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
PATH = f"/hooks/web/{APP}/chat"
# The process under valgrind: one worker, its settings from CREDITGATE_* (gateway_env);
# it prints "ready <pid>" once it listens. Code, not a module of this tree: a baseline's
# tree (on PYTHONPATH) lacks this file.
WORKER = """
import os
from config import load_settings
from gateway.worker import worker_main

class Ready:
    def put(self, item):
        print(*item, flush=True)

worker_main(load_settings(), Ready(), os.environ["CREDITGATE_METERING"] == "on")
"""


async def send(port: int, count: int, connections: int) -> None:
    """``count`` requests over ``connections`` keep-alive connections; each answer 200."""
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Channel-User-Id: bench-user\r\n\r\n"
    ).encode()
    left = count

    async def one_connection() -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while left > 0:
                left -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"answered {head[:300]!r}")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def measure(
    args: argparse.Namespace, tmp: Path, redis_url: str, metering: bool, tree: Path
) -> float:
    """Instructions per message of one worker of ``tree``, metering on or off."""
    port = free_port()
    env = gateway_env(redis_url, port, 1, metering, tmp, server=args.server)
    # Under valgrind the worker runs some 50 times slower: with hundreds of connections
    # the default deadlines (0.5 s for Redis, 2 s for a place at the bot) would refuse
    # messages, which are not what is measured.
    env.update(CREDITGATE_REDIS_TIMEOUT_S="30", CREDITGATE_UPSTREAM_CONNECT_TIMEOUT_S="30",
               CREDITGATE_REFUND_WINDOW_S="60")  # fmt: skip
    env["PYTHONPATH"] = str(tree)  # ahead of the venv's own (editable) install
    out = tmp / f"callgrind.{port}"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            sys.executable, "-c", WORKER]  # fmt: skip
    with (tmp / f"worker-{port}.log").open("w+") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=log, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "ready <pid>" once it listens
            if not line.startswith("ready"):
                log.seek(0)
                raise RuntimeError(f"the worker did not start: {line!r}\n{log.read()[-3000:]}")
            asyncio.run(send(port, args.warmup, args.connections))
            control(proc.pid, "-i", "on")
            asyncio.run(send(port, args.messages, args.connections))
            control(proc.pid, "-i", "off")
            control(proc.pid, "-d")
        finally:
            stop(proc, 120)  # a worker under valgrind is slow to exit
    total = 0
    for dump in tmp.glob(f"callgrind.{port}*"):
        # "summary:" heads a dump (0 when nothing was counted); "totals:" closes it.
        counts = re.findall(r"^(?:summary|totals): (\d+)", dump.read_text(), re.M)
        total = max([total, *map(int, counts)])
    return total / int(args.messages)


@contextlib.contextmanager
def checkout(ref: str, tmp: Path) -> Iterator[Path]:
    """Git ref ``ref`` in a temporary worktree."""
    src = tmp / "baseline-src"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(src), ref],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield src
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(src)],
                       check=False, capture_output=True)  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="counted, per row")
    parser.add_argument("--warmup", type=int, default=300, help="sent before counting")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--server", choices=("fast", "aiohttp"), default="fast")
    parser.add_argument("--only", choices=("on", "off"), help="metering on or off only")
    parser.add_argument("--baseline", default="", help="git ref measured beside this tree")
    parser.add_argument("--rounds", type=int, default=1, help="every row this many times")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    for tool in ("valgrind", "callgrind_control", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/worker_cost.py needs {tool}")
    rows: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="creditgate-cost-")))
        trees = {"this tree": ROOT}
        if args.baseline:
            trees[args.baseline] = stack.enter_context(checkout(args.baseline, tmp))
        redis = start_redis(tmp / "redis")
        stack.callback(redis.stop)
        bot_port = free_port()
        stack.enter_context(nginx(tmp, bot_port, 1, BOT_BODY, f"{HOST}:{bot_port}"))
        asyncio.run(seed(redis.url, f"http://{HOST}:{bot_port}"))
        for n in range(args.rounds):
            for name, tree in trees.items():
                for label in ("off", "on"):
                    if args.only not in (None, label):
                        continue
                    row = f"{name}, metering {label}"
                    per = measure(args, tmp, redis.url, label == "on", tree)
                    rows.setdefault(row, []).append(per)
                    print(f"  round {n + 1}: {row}: {per:,.0f}", file=sys.stderr)
    print_table(args, rows, list(trees))


def print_table(args: argparse.Namespace, rows: dict[str, list[float]], trees: list[str]) -> None:
    def mean(row: str) -> float:
        values = rows.get(row) or [float("nan")]
        return sum(values) / len(values)

    print(f"\n{args.messages:,} messages after {args.warmup:,}, {args.connections} connections, "
          f"one {args.server} worker under callgrind, {args.rounds} round(s)\n")  # fmt: skip
    print(f"| {'worker':<32} | {'instructions/message':>20} | each round")
    print(f"|{'-' * 34}|{'-' * 22}|{'-' * 12}")
    for row, values in rows.items():
        each = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {row:<32} | {mean(row):>20,.0f} | {each}")
    print()
    for name in trees:
        if args.only is None:
            ratio = mean(f"{name}, metering on") / mean(f"{name}, metering off")
            print(f"{name}: metered / unmetered {ratio:.3f}")
    for name in trees[1:]:
        for label in ("off", "on"):
            if args.only in (None, label):
                ratio = mean(f"this tree, metering {label}") / mean(f"{name}, metering {label}")
                print(f"metering {label}: this tree / {name} {ratio:.3f}")


if __name__ == "__main__":
    main()
