"""One standalone usage flusher process: ``python -m gateway.flusher_cli``.

What supervisors (and the crash tests) run when the flusher is its own process; it prints
``flusher <owner> ready`` on stdout once Redis answered. ``creditgate flush`` is the
operator's command for the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from config import load_settings
from meter.usage.flusher import Flusher, serve_flusher


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.flusher_cli [--once] [--force] [--lease S] [--config FILE]``."""
    parser = argparse.ArgumentParser(prog="python -m gateway.flusher_cli", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (the environment wins)")
    parser.add_argument("--once", action="store_true", help="flush what is closed, then exit")
    parser.add_argument("--force", action="store_true", help="also flush buckets still open")
    parser.add_argument("--lease", type=float, default=None, help="claim lease in seconds")
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")

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
