"""The contestants' tooling of ``bench/proxy.py``: nginx and process runners, ``wrk`` and
``hey`` runs parsed into a :class:`Result`, CPU time of a process tree from /proc and of a
Redis server from ``INFO cpu``, and the gateway's /metrics figures (admission latency and
batch size, GC time)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

HOST = "127.0.0.1"

NGINX_CONF = """
daemon off;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream bot {{ server {upstream}; keepalive 256; }}
  server {{
    listen {host}:{port} reuseport;
    location / {{ {body} }}
  }}
}}
"""
BOT_BODY = 'default_type application/json; return 200 \'{"reply":"ok"}\';'
PROXY_BODY = "proxy_pass http://bot/; proxy_http_version 1.1; proxy_set_header Connection '';"


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = float("nan")  # CPU of the contestant's processes per request
    gc_us: float = float("nan")  # garbage collection per request (creditgate)
    admit_ms: float = float("nan")  # mean admission latency (metered creditgate)
    batch: float = float("nan")  # mean admissions per admit.lua call
    redis_us: float = float("nan")  # CPU of the shared redis-server per request
    paced_at: float = float("nan")  # the rate a paced run asked for (hey -q)


def redis_cpu_s(url: str) -> float:
    """CPU seconds (user + system, all threads) the Redis server at ``url`` has used."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def tree_cpu_s(root: int) -> float:
    """utime + stime of ``root`` and every descendant, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return total


def scrape(admin_url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for name in ("creditgate_admission_seconds", "creditgate_admission_batch_size"):
        for part in ("sum", "count"):
            m = re.search(rf"^{name}_{part}(?:{{[^}}]*}})? ([\d.e+-]+)$", text, re.M)
            out[f"{name}_{part}"] = float(m.group(1)) if m else 0.0
    m = re.search(r"^creditgate_gc_seconds_total ([\d.e+-]+)$", text, re.M)
    out["creditgate_gc_seconds_total"] = float(m.group(1)) if m else 0.0
    return out


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


def _on_cpus(cpus: Collection[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that confines the child (and all it forks) to ``cpus``."""
    if not cpus:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


@contextlib.contextmanager
def nginx(
    workdir: Path,
    port: int,
    workers: int,
    body: str,
    upstream: str,
    cpus: Collection[int] | None = None,
) -> Iterator[None]:
    d = workdir / f"nginx-{port}"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers, dir=d, upstream=upstream, host=HOST, port=port, body=body
        )
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(d)], preexec_fn=_on_cpus(cpus))
    try:
        _wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def process(
    argv: list[str],
    port: int,
    env: dict[str, str] | None = None,
    cpus: Collection[int] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running until the block ends, confined to ``cpus`` when given."""
    # Output goes to a file beside the run, so a failing contestant can be diagnosed.
    log = Path(tempfile.gettempdir()) / f"creditgate-bench-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_on_cpus(cpus)
        )
    print(f"  (log of {Path(argv[1]).name if len(argv) > 1 else argv[0]}: {log})", file=sys.stderr)
    try:
        _wait_port(port)
        yield proc
    finally:
        stop(proc, 30)


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``; reaped either way."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# One random channel user per request out of N (wrk's Lua; each thread its own sequence).
USERS_SCRIPT = """
local n, threads = {users}, 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  math.randomseed({seed} + tid)
end
function request()
  return wrk.format(nil, nil, {{["X-Channel-User-Id"] = "u" .. math.random(n)}})
end
"""


def wrk(name: str, url: str, duration: int, connections: int, users: int = 1) -> Result:
    """``users`` > 1: each request from one of that many channel users, drawn at random
    (new users open billing sessions: charged messages); else all from one user."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if users > 1:
            script.write(USERS_SCRIPT.format(users=users, seed=time.time_ns() % 2**31))
            script.flush()
            argv += ["-s", script.name]
        else:
            argv += ["-H", "X-Channel-User-Id: bench-user"]
        out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{name}: {non2xx.group(1)} non-2xx responses\n{out}")
    return Result(name, rps, _latency(out, "50%"), _latency(out, "99%"))


def paced(name: str, url: str, duration: int, rate: float, connections: int = 16) -> Result:
    """A fixed request rate (``hey -q`` per connection): latency below saturation."""
    per_conn = max(1, round(rate / connections))
    out = subprocess.run(
        ["hey", "-z", f"{duration}s", "-c", str(connections), "-q", str(per_conn),
         "-H", "X-Channel-User-Id: bench-user", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if re.search(r"\[(?!200\])\d{3}\]", out.split("Status code distribution:")[-1]):
        raise RuntimeError(f"{name}: non-200 responses\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"{p}% in ([\d.]+) secs", out)
        return float(m.group(1)) * 1000 if m else float("nan")

    return Result(name, rps, pct("50"), pct("99"), paced_at=per_conn * connections)


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m is None:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale
