"""Proxy throughput on one machine, over loopback, at a fixed concurrency (wrk).

Contestants, all in front of the same bot:

* nginx ``proxy_pass`` (1 and all workers) - the ceiling for a proxy;
* ``bench/naive_proxy.py`` - aiohttp with one unbatched EVALSHA per request;
* creditgate with metering off (``CREDITGATE_METERING=off``) and on, 1 and all workers;
* creditgate 1 worker, metering off and on, paced at half the unmetered max rate (hey),
  for the p99 that metering adds below saturation.

The bot is an nginx ``return 200`` on its own port (so the bot is never the bottleneck);
Redis is a throwaway ``redis-server``. Each message comes from one channel user, so
after the first one every admission runs the whole admit.lua path but opens no new
session (rate limits raised out of the way). Prints one table; one run, so noisy.

    .venv/bin/python bench/proxy.py [--duration 10] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port, start_redis  # noqa: E402

HOST = "127.0.0.1"
WS = "benchws"
APP = f"{WS}_app1"

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


def _wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port}")


@contextlib.contextmanager
def nginx(workdir: Path, port: int, workers: int, body: str, upstream: str) -> Iterator[None]:
    d = workdir / f"nginx-{port}"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            workers=workers, dir=d, upstream=upstream, host=HOST, port=port, body=body
        )
    )
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(d)])
    try:
        _wait_port(port)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def process(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    # Output goes to a file beside the run, so a failing contestant can be diagnosed.
    log = Path(tempfile.gettempdir()) / f"creditgate-bench-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    print(f"  (log of {Path(argv[1]).name if len(argv) > 1 else argv[0]}: {log})", file=sys.stderr)
    try:
        _wait_port(port)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(name: str, url: str, duration: int, connections: int) -> Result:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-H",
            "X-Channel-User-Id: bench-user",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
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

    return Result(name, rps, pct("50"), pct("99"))


def _latency(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m is None:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return float(m.group(1)) * scale


async def seed(redis_url: str, bot_url: str) -> None:
    from config import load_catalog, load_settings
    from meter import projection
    from meter.redis_client import connect

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
    redis_url: str, port: int, workers: int, metering: bool, tmp: Path
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        CREDITGATE_REDIS_URL=redis_url,
        CREDITGATE_STORE_URL=f"sqlite:///{tmp}/bench.db",
        CREDITGATE_HOST=HOST,
        CREDITGATE_TRAFFIC_PORT=str(port),
        CREDITGATE_ADMIN_PORT=str(free_port()),
        CREDITGATE_WORKERS=str(workers),
        CREDITGATE_LOG_LEVEL="WARNING",
        CREDITGATE_METERING="on" if metering else "off",
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per contestant")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "hey", "redis-server"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/proxy.py needs {tool}: run `make bench` (installs nginx, wrk, hey)")
    all_workers = os.cpu_count() or 2
    creditgate = str(Path(sys.executable).parent / "creditgate")
    path = f"/hooks/web/{APP}/chat"
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="creditgate-bench-") as tmp_name:
        tmp = Path(tmp_name)
        redis = start_redis(tmp / "redis")
        bot_port = free_port()
        try:
            with nginx(tmp, bot_port, all_workers, BOT_BODY, f"{HOST}:{bot_port}"):
                bot = f"http://{HOST}:{bot_port}"
                asyncio.run(seed(redis.url, bot))

                def run(name: str, port: int) -> None:
                    wrk(name, f"http://{HOST}:{port}{path}", 2, args.connections)  # warm-up
                    results.append(wrk(name, f"http://{HOST}:{port}{path}", args.duration,
                                       args.connections))  # fmt: skip
                    print(f"  {name}: {results[-1].rps:,.0f} req/s", file=sys.stderr)

                for w in (1, all_workers):
                    port = free_port()
                    with nginx(tmp, port, w, PROXY_BODY, f"{HOST}:{bot_port}"):
                        run(f"nginx proxy_pass {w}w", port)
                port = free_port()
                naive = [sys.executable, str(ROOT / "bench" / "naive_proxy.py"),
                         "--port", str(port), "--redis", redis.url, "--upstream", bot]  # fmt: skip
                with process(naive, port):
                    run("naive aiohttp+EVALSHA 1w", port)
                half = 0.0
                for metering in (False, True):
                    for w in (1, all_workers):
                        port = free_port()
                        env = gateway_env(redis.url, port, w, metering, tmp)
                        label = "on" if metering else "off"
                        with process([creditgate, "serve"], port, env):
                            run(f"creditgate metering {label} {w}w", port)
                            if w != 1:
                                continue
                            # Latency below saturation: both at half the unmetered max rate.
                            half = half or results[-1].rps / 2
                            name = f"creditgate metering {label} 1w @{half:,.0f}/s"
                            results.append(paced(name, f"http://{HOST}:{port}{path}",
                                                 args.duration, half))  # fmt: skip
        finally:
            redis.stop()
    print_table(results, all_workers, args)


def print_table(results: list[Result], all_workers: int, args: argparse.Namespace) -> None:
    by = {r.name: r for r in results}
    print(f"\nwrk -t2 -c{args.connections} -d{args.duration}s, loopback, "
          f"{os.cpu_count()} CPUs, bot = nginx return 200\n")  # fmt: skip
    print(f"| {'contestant':<30} | {'req/s':>9} | {'p50 ms':>7} | {'p99 ms':>7} |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for r in results:
        print(f"| {r.name:<30} | {r.rps:>9,.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} |")
    print()
    for w in sorted({1, all_workers}):
        on, off = by[f"creditgate metering on {w}w"], by[f"creditgate metering off {w}w"]
        print(f"metered / unmetered, {w} worker(s): {on.rps / off.rps:.2f}")
    naive = by["naive aiohttp+EVALSHA 1w"]
    print(f"metered 1w / naive: {by['creditgate metering on 1w'].rps / naive.rps:.2f}")
    paced_on = next(r for r in results if r.name.startswith("creditgate metering on 1w @"))
    paced_off = next(r for r in results if r.name.startswith("creditgate metering off 1w @"))
    print(f"p99 added by metering at half the max rate (hey): "
          f"{paced_on.p99_ms - paced_off.p99_ms:+.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
