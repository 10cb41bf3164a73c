"""``creditgate migrate | flush | export | reconcile``: the commands ``gateway/cli.py`` delegates.

Each is ``name(settings, args) -> int`` (exit code) on an argparse ``Namespace``;
:func:`add_arguments` declares the flags each one reads. Missing attributes fall back to
defaults, and ``--fix`` is accepted for ``reconcile --apply``. Output goes to stdout
(or ``--output FILE``), messages to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from config import Settings
from config.money import format_amount
from meter.errors import InvalidInput

# Each command imports what it runs on (the store, Redis, the flusher) itself: building
# the parser loads none of it (start-up CPU of every `creditgate` call).


def add_arguments(sub: Any) -> None:
    """Add the four subcommands with their flags to an ``add_subparsers()`` object."""
    sub.add_parser("migrate", help="create or upgrade the durable store's schema")
    p = sub.add_parser("flush", help="run the usage flusher alone")
    add_flush_arguments(p)
    p = sub.add_parser("export", help="export billing usage as CSV or NDJSON")
    add_export_arguments(p)
    p = sub.add_parser("reconcile", help="compare Redis balances with the store")
    add_reconcile_arguments(p)


def add_flush_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--once",
        action="store_true",
        help="flush what is closed, then exit (default: run until SIGTERM)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="also flush buckets still open (default: closed ones only)",
    )
    p.add_argument(
        "--lease",
        type=float,
        default=None,
        help="claim lease in seconds (default: 4 x CREDITGATE_FLUSH_INTERVAL_S, at least 10)",
    )
    p.add_argument(
        "--replay-dead-letters",
        action="store_true",
        help="write every batch in flush_dead_letters that this version can read, exactly "
        "once, then exit; exit 1 if some stay (each flusher pass also replays them)",
    )


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from",
        dest="from_",
        metavar="TIME",
        help="start, ISO 8601 (UTC) (default: 30 days before --to)",
    )
    p.add_argument("--to", metavar="TIME", help="end, exclusive, ISO 8601 (UTC) (default: now)")
    p.add_argument("--workspace", help="one workspace only (default: all)")
    p.add_argument(
        "--granularity",
        choices=("hour", "day", "week", "month"),
        default="day",
        help="period of a usage row (default: day)",
    )
    p.add_argument("--format", choices=("csv", "ndjson"), default="csv", help="(default: csv)")
    p.add_argument(
        "--sessions", action="store_true", help="billing-session detail rows (default: usage)"
    )
    p.add_argument("--output", "-o", default="-", help="file, or - for stdout (default: -)")


def add_reconcile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", help="one workspace only (default: all)")
    p.add_argument(
        "--apply",
        action="store_true",
        help="write the store-derived values (default: only report)",
    )


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


# ------------------------------------------------------------------ migrate


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Apply missing schema migrations."""
    return asyncio.run(_migrate(settings))


async def _migrate(settings: Settings) -> int:
    from gateway.startup import open_ready_store

    applied: list[int] = []
    store = await open_ready_store(settings, migrate=True, applied=applied)
    try:
        version = await store.schema_version()
    finally:
        await store.close()
    _err(f"schema at version {version}" + (f" (applied {applied})" if applied else ""))
    return 0


# -------------------------------------------------------------------- flush


def flush(settings: Settings, args: argparse.Namespace) -> int:
    """Run the flusher until SIGTERM, or ``--once``: drain what is closed and exit."""
    from gateway.flusher_cli import print_replay, replay_dead_letters, serve_flusher

    if getattr(args, "replay_dead_letters", False):
        asyncio.run(_preflight(settings, redis=False))
        return print_replay(asyncio.run(replay_dead_letters(settings)), _err)
    asyncio.run(_preflight(settings, redis=True))
    once, force = bool(getattr(args, "once", False)), bool(getattr(args, "force", False))
    res = asyncio.run(
        serve_flusher(settings, once=once, force=force, lease_s=getattr(args, "lease", None))
    )
    if once:
        _err(f"flushed {res.batches} batches, {res.rows} rows ({res.duplicates} already written)")
        if res.busy or res.failed:
            _err(f"{res.busy} buckets held by other flushers, {res.failed} failed")
            return 1
    return 0


# ------------------------------------------------------------------- export


def export(settings: Settings, args: argparse.Namespace) -> int:
    """Write a usage or billing-session export; exit 2 on invalid input."""
    from meter.store.periods import DAY_MS
    from meter.usage.export import parse_time

    try:
        to_ms = parse_time(args.to, "to") if getattr(args, "to", None) else int(time.time() * 1000)
        raw_from = getattr(args, "from_", None) or getattr(args, "from", None)
        from_ms = parse_time(raw_from, "from") if raw_from else to_ms - 30 * DAY_MS
    except InvalidInput as exc:
        _err(f"creditgate export: {exc}")
        return 2
    return asyncio.run(_export(settings, args, from_ms, to_ms))


async def _preflight(settings: Settings, *, redis: bool) -> None:
    """Fail with one line (StartupError) before any work if the store or Redis cannot
    serve the command; the commands then open their own connections."""
    from gateway.startup import open_ready_store, ready_redis

    store = await open_ready_store(settings)
    await store.close()
    if redis:
        client = await ready_redis(settings)
        await client.aclose()


async def _export(settings: Settings, args: argparse.Namespace, from_ms: int, to_ms: int) -> int:
    from gateway.export_output import output
    from gateway.startup import open_ready_store
    from meter.usage.export import export_stream

    async with await open_ready_store(settings) as store:
        try:
            chunks = export_stream(
                store,
                kind="sessions" if getattr(args, "sessions", False) else "usage",
                fmt=getattr(args, "format", "csv") or "csv",
                from_ms=from_ms,
                to_ms=to_ms,
                granularity=getattr(args, "granularity", None) or "day",
                workspace=getattr(args, "workspace", None),
                bucket_s=settings.flush_bucket_s,
            )
        except InvalidInput as exc:
            _err(f"creditgate export: {exc}")
            return 2
        path = getattr(args, "output", "-") or "-"
        try:
            with output(path) as out:
                await _copy(chunks, out)
        except OSError as exc:
            _err(f"creditgate export: --output {path}: {exc.strerror or exc}")
            return 2
    return 0


async def _copy(chunks: AsyncIterator[bytes], out: BinaryIO) -> None:
    async for chunk in chunks:
        out.write(chunk)


# ---------------------------------------------------------------- reconcile


def reconcile(settings: Settings, args: argparse.Namespace) -> int:
    """Print every difference; exit 1 if any is not explained by unflushed usage."""
    apply = bool(getattr(args, "apply", False) or getattr(args, "fix", False))
    return asyncio.run(_reconcile(settings, getattr(args, "workspace", None), apply))


async def _reconcile(settings: Settings, workspace: str | None, apply: bool) -> int:
    from gateway.startup import open_ready_store, ready_redis
    from meter.accounts import projection
    from meter.redis_layer.client import warm_up
    from meter.store.periods import DAY_MS
    from meter.usage.pending import held_lines
    from meter.usage.reconcile import reconcile as run

    store = await open_ready_store(settings)
    try:
        client = await ready_redis(settings)
    except BaseException:
        await store.close()
        raise
    await warm_up(client)
    try:
        await projection.rename_legacy_fields(client)  # an older version's field names
        async with store:
            reports = await run(store, client, settings, workspace=workspace, apply=apply)
            since = int(time.time() * 1000) - DAY_MS  # kept for a day: not just in flight
            kept = [] if workspace else await store.kept_reversals(before=since)
            off = await store.hand_credit_mismatches(workspace)
            failed = await store.refund_failures(workspace)
    finally:
        await client.aclose()
    bad = held = 0
    for rep in reports:
        for d in rep.differences:
            print(d.line())
        if rep.reprovisioned:
            print(f"{rep.workspace_id}: re-provisioned from the store")
        if rep.applied and rep.corrected:  # differences: the comparison it corrected
            print(f"{rep.workspace_id}: applied {rep.corrected} corrections")
        for kind, buckets in rep.stranded.items():
            what = "usage buckets" if kind == "ag" else "billing-session buckets"
            fix = "indexed" if apply else "reconcile --apply indexes them"
            print(f"{rep.workspace_id}: {len(buckets)} {what} outside their index, never "
                  f"flushed ({fix}): {', '.join(map(str, buckets))}")  # fmt: skip
            bad += 0 if apply else len(buckets)
        if rep.unsettled:
            print(f"{rep.workspace_id}: not corrected: balances moved while comparing "
                  "(stop traffic, then run again)")  # fmt: skip
        for line in held_lines(rep.workspace_id, rep.quarantined, rep.unreadable, apply):
            print(line)  # dead letters, counted as spent: exit 1 until replayed
        bad += len(rep.mismatches)
        held += len(rep.quarantined) + len(rep.unreadable)
    for pi, ref, _at in kept:  # not counted: a payment never credited here keeps them
        print(f"pending_reversals: {ref} of {pi} kept for a day or more, its payment not "
              "credited here (if it was paid here, credit it by hand under that payment "
              "intent, or resend its checkout's paid event from Stripe)")  # fmt: skip
    for co in off:  # not counted: the operator decides (a refund, a debit, or nothing)
        print(f"hand_credit_mismatch: {co.workspace_id}: checkout {co.id} "
              f"({co.payment_intent}) paid {format_amount(co.detail['paid_amount'])}, "
              f"credited by hand as {co.detail.get('credited_as')} "
              f"{format_amount(co.detail['credited_amount'])}")  # fmt: skip
    for f in failed:  # not counted: credited back by an operator (Stripe's total decides)
        back = f.credited_back
        state = (f"credited back {format_amount(back.amount)} ({back.reference})" if back
                else "not credited back (POST /v1/workspaces/<ws>/refund-credits: "
                "Stripe's refunded total decides)")  # fmt: skip
        print(f"refund_failed: {f.workspace_id or '-'}: refund {f.refund} of charge "
              f"{f.charge} (payment intent {f.payment_intent}) {format_amount(f.amount)} "
              f"{(f.currency or '').upper()} {f.status} (event {f.event_id}): {state}")  # fmt: skip
    unsettled = any(rep.unsettled or rep.held for rep in reports)
    done = " corrected" if apply and not unsettled else ""
    more = f", {held} quarantined or unreadable" if held else ""
    _err(f"{len(reports)} workspaces, {bad} mismatches{done}{more}")
    return 1 if (bad and (not apply or unsettled)) or held else 0
