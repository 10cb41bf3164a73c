"""``creditgate notifications``: the owner notifications not delivered yet, for an operator.

``CreditgateWebhookOverdue`` and the warnings of the notifier say that a workspace's
webhook keeps failing; this lists which notifications wait, how often each failed,
when it is tried next and the last error (``--overdue``: those failed
``WEBHOOK_MAX_ATTEMPTS`` times or more; ``--workspace``: one workspace's). Read from the
durable store only. Every value is printed escaped: a last error may quote what a
tenant's server answered, and it must not reach the operator's terminal as control
characters.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from config import Settings

if TYPE_CHECKING:
    from meter.store import OutboxEvent

COLUMNS = (
    "workspace",
    "event",
    "type",
    "created (UTC)",
    "attempts",
    "next try (UTC)",
    "last error",
)
MAX_ERROR = 200  # characters of the last error shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", metavar="ID", help="only this workspace's notifications")
    p.add_argument(
        "--overdue",
        action="store_true",
        help="only those failed WEBHOOK_MAX_ATTEMPTS times or more; exit 1 if any",
    )
    p.add_argument(
        "--limit", type=int, default=1000, metavar="N", help="list at most N (default 1000)"
    )


def notifications(settings: Settings, args: argparse.Namespace) -> int:
    """Print the undelivered notifications; with ``--overdue``, exit 1 if any."""
    limit = getattr(args, "limit", 1000)
    if limit < 1:
        print("creditgate notifications: --limit must be at least 1", file=sys.stderr)
        return 2
    overdue = bool(getattr(args, "overdue", False))
    workspace = getattr(args, "workspace", None)
    events = asyncio.run(_read(settings, overdue, workspace, limit))
    sys.stdout.write(table(events))
    what = "overdue" if overdue else "undelivered"
    more = f" (the first {limit}: --limit shows more)" if len(events) == limit else ""
    print(f"{len(events)} {what} notification(s){more}", file=sys.stderr)
    return 1 if overdue and events else 0


async def _read(
    settings: Settings, overdue: bool, workspace: str | None, limit: int
) -> list[OutboxEvent]:
    from gateway.startup import open_ready_store

    async with await open_ready_store(settings) as store:
        least = settings.webhook_max_attempts if overdue else 0
        return await store.undelivered_events(
            min_attempts=least, workspace_id=workspace, limit=limit
        )


def table(events: Sequence[OutboxEvent]) -> str:
    """``events`` as aligned columns under a header line (nothing but the header if none)."""
    rows = [COLUMNS] + [_row(e) for e in events]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join([*(v.ljust(w) for v, w in zip(r, widths, strict=False)), r[-1]]) for r in rows
    ]
    return "".join(line.rstrip() + "\n" for line in lines)


def _row(e: OutboxEvent) -> tuple[str, ...]:
    error = e.last_error or "-"
    if len(error) > MAX_ERROR:
        error = error[:MAX_ERROR] + "..."
    next_try = "-" if e.next_attempt_at is None else _utc(e.next_attempt_at)
    fields = (e.workspace_id, e.event_id, e.event_type, _utc(e.created_at), str(e.attempts))
    return tuple(escape(v) for v in (*fields, next_try, error))


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def escape(text: str) -> str:
    """``text`` with every character that is not printable (escape sequences, line
    breaks, bidirectional controls) written as a Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
