"""The usage flusher as a process: :func:`serve_flusher`, and ``python -m gateway.flusher_cli``.

``creditgate flush`` runs :func:`serve_flusher`; ``python -m gateway.flusher_cli`` is the
same for supervisors (and the crash tests): it prints ``flusher <owner> ready`` on stdout
once Redis answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from config import Settings, load_settings
from meter.redis_layer.client import connect, warm_up
from meter.redis_layer.clock import RedisClock, following
from meter.store import open_store
from meter.usage.flush_stats import PassResult
from meter.usage.flusher import Flusher
from meter.usage.replay import ReplayReport, replay_all

log = logging.getLogger(__name__)


async def serve_flusher(
    settings: Settings,
    *,
    once: bool = False,
    force: bool = False,
    lease_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Flusher], None] | None = None,
) -> PassResult:
    """Run a flusher until ``stop`` (or SIGTERM/SIGINT); ``once``: drain, then return.

    ``on_ready`` is called once Redis answered and the flusher is about to start.
    """
    client = connect(settings.redis_url)
    await warm_up(client)
    store = open_store(settings.store_url)
    clock = RedisClock()  # buckets close, and claims take ids, by Redis's clock
    try:
        async with following(clock, client, settings.clock_sync_s, settings.redis_timeout_s):
            flusher = Flusher(client, store, settings, lease_s=lease_s, clock=clock)
            if once:
                try:
                    return await flusher.drain(force=force, within_s=max(60.0, 3 * flusher.lease_s))
                finally:
                    await flusher.close()
            stop = stop or asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            log.info("flusher %s started (lease %.1fs)", flusher.owner, flusher.lease_s)
            if on_ready is not None:
                on_ready(flusher)
            try:
                await flusher.run(stop, force_on_stop=force)
            finally:
                await flusher.close()
            return PassResult()
    finally:
        await store.close()
        await client.aclose()


async def replay_dead_letters(settings: Settings) -> ReplayReport:
    """Replay every dead letter once with this version's code (no Redis needed)."""
    async with open_store(settings.store_url) as store:
        return await replay_all(store, int(settings.session_block_s * 1000))


def print_replay(report: ReplayReport, out: Callable[[str], None]) -> int:
    """Report a replay line by line; exit code 1 when some dead letters stay."""
    for dead_id, why in report.stuck.items():
        out(f"dead letter {dead_id} stays: {why}")
    out(
        f"replayed {len(report.replayed)} dead letters ({len(report.taken)} by another "
        f"replayer), {len(report.stuck)} stay"
    )
    return 1 if report.stuck else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.flusher_cli [--once] [--force] [--lease S]
    [--replay-dead-letters] [--config FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m gateway.flusher_cli", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (the environment wins)")
    parser.add_argument("--once", action="store_true", help="flush what is closed, then exit")
    parser.add_argument("--force", action="store_true", help="also flush buckets still open")
    parser.add_argument("--lease", type=float, default=None, help="claim lease in seconds")
    parser.add_argument(
        "--replay-dead-letters",
        action="store_true",
        help="write every quarantined batch this version can read, once, then exit",
    )
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    if args.replay_dead_letters:
        return print_replay(asyncio.run(replay_dead_letters(settings)), print)

    def ready(flusher: Flusher) -> None:
        # One line on stdout for supervisors (and tests) waiting for a running flusher.
        print(f"flusher {flusher.owner} ready", flush=True)

    res = asyncio.run(
        serve_flusher(
            settings, once=args.once, force=args.force, lease_s=args.lease, on_ready=ready
        )
    )
    if args.once:
        print(
            f"batches={res.batches} rows={res.rows} duplicates={res.duplicates} "
            f"busy={res.busy} failed={res.failed}"
        )
        return 0 if res.busy == 0 and res.failed == 0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
