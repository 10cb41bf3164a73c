"""The ``creditgate`` command line.

``serve`` runs the gateway (traffic workers + admin port + flusher); ``demo`` runs
everything locally on embedded defaults; ``migrate``, ``flush``, ``export`` and
``reconcile`` are carried out by ``gateway.cli_commands.<name>(settings, args)``,
``notifications`` by :mod:`gateway.cli_notifications`.

Settings: command-line flags beat ``CREDITGATE_*`` variables, which beat ``--config FILE``.
Whatever stops a command that an operator can fix (a bad setting, an unreachable Redis or
store, a busy port, a store that needs ``creditgate migrate``) is one line on stderr
naming the setting and its value (secrets masked), and a non-zero exit: 2 for settings,
1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from config import Settings, SettingsError, load_settings
from config.loading import env_name
from config.urls import mask_url
from gateway import cli_commands, cli_notifications
from gateway.startup import StartupError, redis_problem, store_problem

DESCRIPTION = (
    "creditgate: a request-metering gateway in front of chat bots. Settings come from "
    "command-line flags, then CREDITGATE_* environment variables, then the --config YAML "
    "file. First run: `creditgate demo`; in production: `creditgate migrate`, then "
    "`creditgate serve`."
)
COMMANDS: dict[str, tuple[str, str]] = {
    # name: (one-line help, description)
    "serve": (
        "run the gateway",
        "Run the gateway: traffic workers on the traffic port, probes, metrics and the "
        "admin API on the admin port, and the usage flusher. An embedded SQLite store "
        "migrates itself; a PostgreSQL store behind this version's schema is refused "
        "(run `creditgate migrate`). Redis may be down at start: the gateway serves "
        "(fail-open meters later) and /readyz reports it until it answers.",
    ),
    "demo": (
        "run everything locally with a seeded demo workspace",
        "Start a private redis-server, a sample bot and the gateway on 127.0.0.1 with a "
        "fresh SQLite store in ./.demo, seed a workspace, and print its tokens, the "
        "dashboard URL and curl lines to try. Ctrl-C stops everything. One demo at a time "
        "per directory.",
    ),
    "migrate": (
        "create or upgrade the durable store's schema",
        "Apply the missing schema migrations to the store (CREDITGATE_STORE_URL). Safe to "
        "run again and from several processes at once.",
    ),
    "flush": (
        "run the usage flusher alone",
        "Write closed usage buckets from Redis to the durable store, until SIGTERM or, with "
        "--once, until nothing closed is left. Each pass also replays the quarantined "
        "batches (flush_dead_letters) this version can read, written once; "
        "--replay-dead-letters replays them all, then exits.",
    ),
    "export": (
        "export billing usage (CSV or NDJSON)",
        "Write usage per app, channel and period (or billing-session detail with "
        "--sessions) from the durable store.",
    ),
    "reconcile": (
        "compare Redis balances with the ledger minus flushed usage",
        "Print every difference between the Redis balances and what the store says they "
        "should be; --apply writes the store-derived values.",
    ),
    "notifications": (
        "list the owner notifications not delivered yet",
        "Print each undelivered owner notification from the durable store: workspace, "
        "event, type, when it was made, failed attempts, next try and the last error. "
        "--overdue lists those failed WEBHOOK_MAX_ATTEMPTS times or more (what "
        "creditgate_webhook_outbox_overdue counts) and exits 1 if there are any.",
    ),
}


def _version() -> str:
    try:
        return metadata.version("creditgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if name in ("redis_url", "store_url") and isinstance(value, str):
        value = mask_url(value)
    return str(value)


class _Version(argparse._VersionAction):
    """``--version``, the installed version read only when asked (a metadata lookup costs
    every other call ~0.04 s of CPU)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        self.version = f"creditgate {_version()}"
        super().__call__(parser, *args, **kwargs)


def _setting_help(what: str, name: str, default: str | None = None) -> str:
    return f"{what} ({env_name(name)}, default {default or _default(name)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditgate", description=DESCRIPTION)
    parser.add_argument("--version", action=_Version)
    parser.add_argument(
        "--config", metavar="PATH", help="YAML settings file (CREDITGATE_CONFIG, default none)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --config, --redis-url and --store-url are accepted after the subcommand too.
    # The demo brings its own Redis and store: no flags for them.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="YAML settings file (CREDITGATE_CONFIG, default none)",
    )
    stores = argparse.ArgumentParser(add_help=False)
    stores.add_argument(
        "--redis-url", metavar="URL", help=_setting_help("Redis to use", "redis_url")
    )
    stores.add_argument(
        "--store-url", metavar="URL", help=_setting_help("durable store", "store_url")
    )

    def _add(name: str) -> argparse.ArgumentParser:
        help_, description = COMMANDS[name]
        parents = [common] if name == "demo" else [common, stores]
        return sub.add_parser(name, parents=parents, help=help_, description=description)

    _serve_options(_add("serve"))
    demo = _add("demo")
    _serve_options(demo, demo=True)
    _add("migrate")
    cli_commands.add_flush_arguments(_add("flush"))
    cli_commands.add_export_arguments(_add("export"))
    cli_commands.add_reconcile_arguments(_add("reconcile"))
    cli_notifications.add_arguments(_add("notifications"))
    return parser


def _serve_options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    host = "127.0.0.1" if demo else None
    p.add_argument("--host", metavar="ADDR", help=_setting_help("listen address", "host", host))
    p.add_argument(
        "--traffic-port",
        type=int,
        metavar="PORT",
        help=_setting_help("traffic port", "traffic_port"),
    )
    p.add_argument(
        "--admin-port",
        type=int,
        metavar="PORT",
        help=_setting_help("admin port", "admin_port"),
    )
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help=_setting_help("worker processes, 0 = CPU count", "workers", "1" if demo else None),
    )


_FLAG_SETTINGS = ("host", "traffic_port", "admin_port", "workers", "redis_url", "store_url")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {n: getattr(args, n) for n in _FLAG_SETTINGS if getattr(args, n, None) is not None}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(args.config, _overrides(args))
        settings = load_settings(args.config, **_overrides(args))
        if args.command == "serve":
            from gateway.serve import serve
            from meter.accounts.egress import check_settings

            check_settings(settings)  # before any worker starts
            return serve(settings)
        return delegate(args.command, settings, args)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    except StartupError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a raw traceback: one line, the traceback at DEBUG
        line = explain(exc, settings)
        if os.environ.get(env_name("log_level"), "").upper() == "DEBUG":
            logging.getLogger("creditgate").exception("%s", line)
        return _fail(line, 1)


def _fail(message: str, code: int) -> int:
    print(f"creditgate: {message}", file=sys.stderr, flush=True)
    return code


def explain(exc: BaseException, settings: Settings | None) -> str:
    """One line for an exception that escaped a command, naming the setting if known."""
    from redis.exceptions import RedisClusterException, RedisError

    from meter.store import StoreError

    if settings is not None:
        if isinstance(exc, RedisError | RedisClusterException):
            return str(redis_problem(settings, exc))
        if isinstance(exc, StoreError):
            return str(store_problem(settings, exc))
    text = " ".join(str(exc).split())
    return (
        f"unexpected {type(exc).__name__}: {text} "
        f"({env_name('log_level')}=DEBUG shows the traceback)"
    )


def delegate(name: str, settings: Settings, args: argparse.Namespace) -> int:
    """Run ``<module>.<name>(settings, args)``; its result is the exit code."""
    module = cli_notifications if name == "notifications" else cli_commands
    command = getattr(module, name)
    return int(command(settings, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
