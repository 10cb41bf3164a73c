"""Instructions redis-server executes per admission of admit.lua: a steady figure where
throughput is noisy (a shared machine), measured under valgrind (callgrind).

Runs redis-server under ``valgrind --tool=callgrind`` twice, with the same set-up (one
workspace of bench/admission.py, 1,024 open billing sessions) and 2 then 2 + ``--calls``
(20) calls of ``--batch`` admissions; the difference is the cost of those admissions
alone, per admission (at batch 1: per call, the call's fixed cost included). Not
counted: serverCron, timer work that grows with the wall time valgrind stretches (on a
busy machine it added tens of thousands of instructions per call of batch 1). Rows:
messages inside a paid session (stamped with the sessions' own time, so the
charge-record look-up is taken, as in bench/admission.py's in-session row; a
millisecond later per call, as real traffic is; the same with a channel idempotency
key, short as Slack's, and 60 characters long as WhatsApp's, whose record id is then
named by its digest: meter/lua/lib_records.lua), and messages opening a new session.
Several ``--batch`` sizes give one column each: small batches (moderate load) show the
fixed cost of a call, large ones the cost of an admission.

    .venv/bin/python -m bench.lua_cost [--batch 256]     # needs valgrind; ~1 min
    .venv/bin/python -m bench.lua_cost --batch 1 16 256  # ~3 min
    .venv/bin/python -m bench.lua_cost --batch 1 16 --calls 400  # ~4 min

Over 20 calls a batch of 1 moves by 10,000-30,000 instructions run to run (a step of
Lua's garbage collector falls inside them or not); over 400 calls by about 1,000, and
variants of the script that do the same work differ by up to 3,000.
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
import time
from pathlib import Path

import redis

from bench.admission import NOW, bench_settings, seed
from meter.admission.admitter import Admitter
from meter.redis_layer import keys
from meter.redis_layer.client import connect
from meter.redis_layer.scripts import lua_source
from tests.support.servers import free_port

APP = "bench0000_app1"
SESSIONS = 1024


def messages(kind: str, call: int, batch: int) -> list[str]:
    if kind in ("keyed", "long"):  # a new channel key each (an event id), users in sessions
        users = [(j * 7919 + call * 31) % SESSIONS for j in range(batch)]
        width = 60 if kind == "long" else 0
        return [
            f"{APP}\tweb\tu{u:012d}\t{f'ev{call}x{j}':z<{width}}\tt{call}x{j}\tm\tab12"
            for j, u in enumerate(users)
        ]
    if kind == "new":
        return [f"{APP}\tweb\tn{call}x{j:08d}\t\tt{call}x{j}\tm" for j in range(batch)]
    # Users of the open sessions, spread over them call after call.
    return [
        f"{APP}\tweb\tu{(j * 7919 + call * 31) % SESSIONS:012d}\t\tt{call}x{j}\tm"
        for j in range(batch)
    ]


def instructions(kind: str, calls: int, batch: int) -> int:
    """Instructions of a redis-server that ran the set-up and ``calls`` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        port, out = free_port(), f"{tmp}/callgrind.out"
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--toggle-collect=serverCron", "--collect-atstart=yes",
             f"--callgrind-out-file={out}", "redis-server",
             "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        r = redis.Redis(port=port)
        for _ in range(600):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        head = asyncio.run(_prepare(port))
        sha, declared = r.script_load(lua_source("admit")), keys.ws_keys("bench0000")
        for i in range(0, SESSIONS, 256):
            opening = [f"{APP}\tweb\tu{j:012d}\t\to{j}\tm" for j in range(i, i + 256)]
            r.evalsha(sha, 2, *declared, *head, *opening)
        for call in range(calls):
            now = head[0] + (call + 1 if kind in ("later", "keyed", "long") else 0)
            r.evalsha(sha, 2, *declared, now, *head[1:], *messages(kind, call, batch))
        with contextlib.suppress(redis.ConnectionError):  # it closes the connection
            r.shutdown(nosave=True)
        proc.wait()
        found = re.search(r"^summary:\s*(\d+)", Path(out).read_text(), re.M)
        assert found, "no callgrind summary"
        return int(found.group(1))


async def _prepare(port: int) -> list[int | str]:
    cfg = bench_settings()
    client = connect(f"redis://127.0.0.1:{port}")
    await seed(client, cfg, 1)
    head = Admitter(client, cfg).argv_head(NOW)
    await client.aclose()
    return [v if isinstance(v, int) else str(v) for v in head]  # type: ignore[misc]


def per_admission(kind: str, batch: int, calls: int = 20) -> float:
    """Instructions per admission of ``calls`` calls of ``batch`` (the set-up subtracted)."""
    return (instructions(kind, 2 + calls, batch) - instructions(kind, 2, batch)) / (calls * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[256], help="one or more sizes")
    ap.add_argument("--calls", type=int, default=20, help="calls measured per figure")
    opt = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench.lua_cost needs valgrind")
    print("admit.lua, instructions of redis-server per admission, by batch size")
    print(f"  {'':<52}" + "".join(f" {f'batch {b}':>11}" for b in opt.batch))
    for kind, label in (
        ("inside", "in a paid session, same stamp as the session"),
        ("later", "in a paid session, stamped later (real traffic)"),
        ("keyed", "the same with a channel key (Slack, Teams, WhatsApp)"),
        ("long", "the same, a 60-character key (a WhatsApp id)"),
        ("new", "opening a new billing session"),
    ):
        costs = [per_admission(kind, b, opt.calls) for b in opt.batch]
        print(f"  {label:<52}" + "".join(f" {c:>11,.0f}" for c in costs), flush=True)


if __name__ == "__main__":
    main()
