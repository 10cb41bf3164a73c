"""The ``creditgate`` command line.

``serve`` runs the gateway (traffic workers + admin port + flusher); ``demo`` runs
everything locally on embedded defaults; ``migrate``, ``flush``, ``export`` and
``reconcile`` are carried out by ``meter.cli_commands.<name>(settings, args)``.

Settings come from ``CREDITGATE_*`` variables and ``--config FILE`` (the environment
wins); invalid settings print the reason and exit 2. ``CREDITGATE_METERING=off`` makes
``serve`` proxy without admission: a benchmark baseline, never for production.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from config import Settings, SettingsError, load_settings

DELEGATED = ("migrate", "flush", "export", "reconcile")
# Not a setting (settings reject unknown CREDITGATE_* names): read here, removed from
# the environment before settings are loaded.
METERING_ENV = "CREDITGATE_METERING"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditgate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", metavar="PATH", help="YAML settings file")
    sub = parser.add_subparsers(dest="command", required=True)
    # --config is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS)
    add = sub.add_parser

    def _add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return add(name, parents=[common], **kw)

    serve = _add("serve", help="run the gateway")
    _serve_options(serve)
    demo = _add("demo", help="run everything locally with a seeded demo workspace")
    _serve_options(demo)
    demo.set_defaults(traffic_port=None)

    _add("migrate", help="create or upgrade the durable store's schema")
    flush = _add("flush", help="run the usage flusher alone")
    flush.add_argument("--once", action="store_true", help="flush what is closed, then exit")
    flush.add_argument("--force", action="store_true", help="also flush open buckets")
    export = _add("export", help="export billing usage")
    export.add_argument("--format", choices=("csv", "ndjson"), default="csv")
    export.add_argument("--workspace", help="one workspace only")
    export.add_argument("--from", dest="from_", metavar="TIME", help="start (ISO 8601)")
    export.add_argument("--to", metavar="TIME", help="end (ISO 8601, exclusive)")
    export.add_argument("--output", "-o", default="-", help="file, or - for stdout")
    reconcile = _add("reconcile", help="compare Redis balances with the ledger")
    reconcile.add_argument("--workspace", help="one workspace only")
    reconcile.add_argument("--fix", action="store_true", help="rebuild what differs")
    return parser


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (setting host)")
    p.add_argument("--traffic-port", type=int, help="setting traffic_port")
    p.add_argument("--admin-port", type=int, help="setting admin_port")
    p.add_argument("--workers", type=int, help="traffic worker processes (0 = CPU count)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "traffic_port", "admin_port", "workers")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _metering() -> bool:
    value = os.environ.pop(METERING_ENV, "on").strip().lower()
    return value not in ("off", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    metering = _metering()
    try:
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(args.config, _overrides(args))
        settings = load_settings(args.config, **_overrides(args))
    except SettingsError as exc:
        print(f"creditgate: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from gateway.serve import serve

        return serve(settings, metering=metering)
    return delegate(args.command, settings, args)


def delegate(name: str, settings: Settings, args: argparse.Namespace) -> int:
    """Run ``meter.cli_commands.<name>(settings, args)`` (sync or async)."""
    try:
        cli_commands = importlib.import_module("meter.cli_commands")
    except ImportError:
        cli_commands = None
    func = getattr(cli_commands, name, None)
    if func is None:
        print(f"creditgate {name}: not available in this build", file=sys.stderr)
        return 2
    result = func(settings, args)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return int(result or 0)


async def _await(aw: Any) -> Any:
    return await aw


if __name__ == "__main__":
    sys.exit(main())
