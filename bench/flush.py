"""Flush throughput: usage-bucket rows/s and billing-session rows/s, SQLite and PostgreSQL.

Starts its own redis-server and PostgreSQL (tests/servers.py) on loopback, fills Redis
with closed aggregate buckets and session-record buckets as ``admit.lua`` writes them,
then times the flusher (claim -> one transaction per bucket -> ack) draining them.

    .venv/bin/python -m bench.flush [--workspaces 20] [--buckets 10] [--rows 500]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from config import load_catalog, load_settings
from meter.accounts import projection
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.store import open_store
from meter.usage.flusher import Flusher
from tests.support.servers import start_postgres, start_redis

T0 = 1_700_000_000  # long closed buckets


async def fill(client: RedisClient, kind: str, spaces: int, buckets: int, rows: int) -> int:
    """Write ``spaces x buckets`` closed buckets of ``rows`` rows each; return the row count."""
    for w in range(spaces):
        ws = f"bench{w:04d}"
        await projection.put_workspace(client, ws, plan="standard", catalog=load_catalog())
        async with client.pipeline(transaction=False) as pipe:
            for b in range(buckets):
                bucket = T0 + b * 60
                if kind == "ag":
                    mapping = {}
                    for r in range(rows):
                        f = keys.agg_field(
                            f"{ws}_app{r % 50:04d}", f"ch{r // 50}", "agent", "request", ""
                        )
                        mapping.update(
                            {f + "n": 3, f + "m": 3, f + "p": 60_000, f + "r:rate_limited": 1}
                        )
                    pipe.hset(keys.agg_key(ws, bucket), mapping=mapping)
                    pipe.zadd(keys.agg_index_key(ws), {str(bucket): bucket})
                else:
                    start = bucket * 1000
                    # The session entry admit.lua writes (see its header).
                    sessions = {
                        f"{ws}_app{r % 50:04d}\tweb\tuser{r}": (
                            f"{start},5000,1,s{b}x{r},4,200000,automation"
                        )
                        for r in range(rows)
                    }
                    pipe.hset(keys.sessions_key(ws, bucket), mapping=sessions)
                    pipe.zadd(keys.sessions_index_key(ws), {str(bucket): bucket})
            await pipe.execute()
    return spaces * buckets * rows


async def measure(redis_url: str, store_url: str, args: argparse.Namespace) -> dict[str, float]:
    cfg = load_settings(env={}, redis_url=redis_url, store_url=store_url)
    client = connect(redis_url)
    store = open_store(store_url)
    await store.migrate()
    out: dict[str, float] = {}
    try:
        for kind, name in (("ag", "usage"), ("sr", "sessions")):
            await client.flushall()
            n = await fill(client, kind, args.workspaces, args.buckets, args.rows)
            flusher = Flusher(client, store, cfg, concurrency=args.concurrency)
            t = time.perf_counter()
            await flusher.drain(force=False)
            elapsed = time.perf_counter() - t
            assert flusher.stats.rows[name] == n, (flusher.stats.rows, n)
            out[name] = n / elapsed
    finally:
        await store.close()
        await client.aclose()
    return out


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workspaces", type=int, default=20)
    p.add_argument("--buckets", type=int, default=10)
    p.add_argument("--rows", type=int, default=500, help="rows per bucket")
    p.add_argument("--concurrency", type=int, default=4, help="workspaces flushed at once")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="creditgate-bench-") as tmp:
        redis = start_redis(Path(tmp) / "redis")
        pg = start_postgres(Path(tmp) / "pg")
        try:
            results = {
                "sqlite": await measure(redis.url, f"sqlite:///{tmp}/bench.db", args),
                "postgresql": await measure(redis.url, pg.dsn, args),
            }
        finally:
            redis.stop()
            pg.cleanup()
    total = args.workspaces * args.buckets * args.rows
    print(f"flush throughput ({total} rows per kind, {args.rows} rows per bucket transaction)")
    print(f"{'store':<12}{'bucket rows/s':>16}{'session rows/s':>16}")
    for store, r in results.items():
        print(f"{store:<12}{r['usage']:>16,.0f}{r['sessions']:>16,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
