"""Flush buckets outside their index: live usage that no flusher would ever take.

The flusher finds live aggregates (``P:ag:<b>``) and billing-session records
(``P:sr:<b>``) through their indexes only (``P:agi``, ``P:sri``:
:mod:`meter.redis_layer.keys`). Every script indexes such a hash as it makes it, so one
outside its index means the index was changed by hand (deleted, or restored from older
data than the hashes). Its usage would never reach the store, and reconcile would count
it in no unflushed total, so ``reconcile --apply`` would give back the balance that
usage took. :func:`find` lists them, with a SCAN of the keyspace (of every primary on
Redis Cluster); :func:`check` confirms them, and with ``index`` puts them back in their
index, where the next flush takes them.
"""

from __future__ import annotations

import re
from collections import defaultdict

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.redis_layer.scripts import register, run

KINDS = ("ag", "sr")
_KEY = re.compile(rb"\A" + re.escape(keys.PREFIX.encode()) + rb":\{([a-z0-9]+)\}:(ag|sr):(\d+)\Z")

Found = dict[str, dict[str, list[int]]]  # workspace -> kind -> bucket starts (s)


async def find(client: RedisClient, workspace: str | None = None) -> Found:
    """Buckets of every workspace (or of ``workspace``) whose hash is outside its index."""
    candidates: Found = defaultdict(lambda: defaultdict(list))
    ws_glob = workspace or "*"  # workspace ids are [a-z0-9]: nothing to escape
    for kind in KINDS:
        pattern = f"{keys.ws_prefix(ws_glob)}:{kind}:*"
        async for key in client.scan_iter(match=pattern, count=1000):
            m = _KEY.match(key)
            if m is not None:
                candidates[m[1].decode()][kind].append(int(m[3]))
    found: Found = {}
    for ws, kinds in candidates.items():
        for kind, buckets in kinds.items():
            outside = await check(client, ws, kind, buckets)
            if outside:
                found.setdefault(ws, {})[kind] = outside
    return found


async def check(
    client: RedisClient, ws: str, kind: str, buckets: list[int], *, index: bool = False
) -> list[int]:
    """Which of ``buckets`` are outside their index, as of one moment; with ``index``,
    they are put back in it."""
    script = register(client, "reindex")
    out: list[bytes] = await run(
        script, client, keys.ws_keys(ws), [kind, "1" if index else "0", *sorted(buckets)]
    )
    return [int(b) for b in out]
