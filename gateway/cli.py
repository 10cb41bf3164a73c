"""The ``creditgate`` command line.

``serve`` runs the gateway (traffic workers + admin port + flusher); ``demo`` runs
everything locally on embedded defaults; ``migrate``, ``flush``, ``export`` and
``reconcile`` are carried out by ``meter.cli_commands.<name>(settings, args)``.

Settings come from ``CREDITGATE_*`` variables and ``--config FILE`` (the environment
wins); invalid settings print the reason and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from config import Settings, SettingsError, load_settings
from meter import cli_commands


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
    cli_commands.add_flush_arguments(_add("flush", help="run the usage flusher alone"))
    cli_commands.add_export_arguments(_add("export", help="export billing usage (CSV/NDJSON)"))
    cli_commands.add_reconcile_arguments(
        _add("reconcile", help="compare Redis balances with ledger minus flushed usage")
    )
    return parser


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (setting host)")
    p.add_argument("--traffic-port", type=int, help="setting traffic_port")
    p.add_argument("--admin-port", type=int, help="setting admin_port")
    p.add_argument("--workers", type=int, help="traffic worker processes (0 = CPU count)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ("host", "traffic_port", "admin_port", "workers")
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(args.config, _overrides(args))
        settings = load_settings(args.config, **_overrides(args))
        if args.command == "serve":
            from meter.egress import check_settings

            check_settings(settings)  # before any worker starts
    except SettingsError as exc:
        print(f"creditgate: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from gateway.serve import serve

        return serve(settings)
    return delegate(args.command, settings, args)


def delegate(name: str, settings: Settings, args: argparse.Namespace) -> int:
    """Run ``meter.cli_commands.<name>(settings, args)``; its result is the exit code."""
    command = getattr(cli_commands, name)
    return int(command(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
