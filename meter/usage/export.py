"""Billing export: usage summaries or billing-session detail as CSV or NDJSON, streamed.

Rows come from the durable store page by page and leave as text chunks, so an export
of any size holds neither a transaction nor the whole result. Money is a decimal string
(``"499.80"``), times are UTC ISO-8601 (``2026-11-26T20:00:00Z``). Usage is summed per
period (``hour``, ``day``, ISO ``week`` from Monday, calendar ``month``) and per app,
channel, product and unit. A range may span at most 90 days.

``period_start``/``period_end`` name the whole calendar period a usage row belongs to;
``covered_from``/``covered_to`` the part of it the row sums: the period cut to the
flush buckets the range takes. Usage is stored per flush bucket (``FLUSH_BUCKET_S``), and
a range takes the buckets that *start* in it, whole: an edge inside a bucket moves up to
that bucket's end (``--to`` 23:59:30 with 60 s buckets takes the bucket of 23:59, so the
row covers to 00:00; ``--from`` 23:59:30 leaves it out). They differ from the period
only in the first and last period of a range that does not begin or end on a period
boundary, so a partial sum is never taken for the period's whole, and two exports that
meet mid-period (``--to`` of one the ``--from`` of the next) label their halves apart.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Literal

import orjson

from config.money import format_amount
from meter.errors import InvalidInput
from meter.store import SessionRow, Store, UsageRow
from meter.store.models import GRANULARITIES, REFUSAL_REASONS
from meter.store.periods import DAY_MS, next_period, period_start
from meter.usage.csv_text import formula_safe

Format = Literal["csv", "ndjson"]
FORMATS: tuple[str, ...] = ("csv", "ndjson")
MAX_RANGE_MS = 90 * DAY_MS
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}

USAGE_FIELDS: tuple[str, ...] = (
    "workspace_id",
    "period_start",
    "period_end",
    "app_id",
    "channel",
    "product",
    "unit",
    "units",
    "messages",
    "amount",
    "amount_free",
    "amount_app_paid",
    "amount_pool",
    "amount_invoiced",
    *(f"refused_{r}" for r in REFUSAL_REASONS),
    "covered_from",
    "covered_to",
)
SESSION_FIELDS: tuple[str, ...] = (
    "workspace_id",
    "app_id",
    "channel",
    "channel_user",
    "billing_session_id",
    "product",
    "start",
    "end",
    "messages",
    "amount",
)


def export_time(ms: int) -> str:
    """UTC ISO-8601 with a ``Z`` and whole seconds (milliseconds when not whole)."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    if ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, field: str = "time") -> int:
    """``2026-11-01``, ``2026-11-01T20:00:00Z`` (or with an offset) -> epoch ms (UTC)."""
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(field, "must be an ISO-8601 date or time, e.g. 2026-11-01") from None
    return int(dt.timestamp() * 1000)


def check_range(from_ms: int, to_ms: int) -> None:
    """Refuse an empty, reversed or longer-than-90-days range."""
    if to_ms <= from_ms:
        raise InvalidInput("to", "must be after from")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise InvalidInput("to", "the range may span at most 90 days; export it in parts")


def check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise InvalidInput("granularity", f"must be one of {', '.join(GRANULARITIES)}")


def _usage_record(
    ws: str,
    start: int,
    span: tuple[str, int, int],
    key: tuple[str, str, str, str],
    acc: list[int],
) -> dict[str, Any]:
    """One row; ``span``: the granularity and the time the range's buckets cover."""
    granularity, from_ms, to_ms = span
    end = next_period(start, granularity)
    app_id, channel, product, unit = key
    units, messages, free, app, pool, invoiced, *refused = acc
    rec: dict[str, Any] = {
        "workspace_id": ws,
        "period_start": export_time(start),
        "period_end": export_time(end),
        "app_id": app_id,
        "channel": channel,
        "product": product,
        "unit": unit,
        "units": units,
        "messages": messages,
        "amount": format_amount(free + app + pool + invoiced),
        "amount_free": format_amount(free),
        "amount_app_paid": format_amount(app),  # a published column name
        "amount_pool": format_amount(pool),
        "amount_invoiced": format_amount(invoiced),
    }
    for reason, n in zip(REFUSAL_REASONS, refused, strict=True):
        rec[f"refused_{reason}"] = n
    rec["covered_from"] = export_time(max(start, from_ms))
    rec["covered_to"] = export_time(min(end, to_ms))
    return rec


def _counters(r: UsageRow) -> list[int]:
    head = [r.units, r.messages, r.amount_free, r.amount_app, r.amount_pool, r.amount_invoiced]
    return head + [r.refused.get(reason, 0) for reason in REFUSAL_REASONS]


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows an export reads: of one workspace (all when None), one app or a set of
    apps, one channel."""

    workspace: str | None = None
    app_id: str | None = None
    app_ids: Collection[str] | None = None
    channel: str | None = None


def bucket_end(ms: int, bucket_s: int) -> int:
    """``ms`` if it is a flush bucket's start, else the end of the bucket it falls in."""
    width = bucket_s * 1000
    return -(-ms // width) * width


async def _usage_records(
    store: Store, from_ms: int, to_ms: int, granularity: str, scope: Scope, bucket_s: int
) -> AsyncGenerator[dict[str, Any], None]:
    """Usage summed per (workspace, period, app, channel, product, unit), in that order."""
    group: tuple[str, int] | None = None
    acc: dict[tuple[str, str, str, str], list[int]] = {}
    # The time the rows cover: the buckets starting in [from_ms, to_ms), each whole.
    span = (granularity, bucket_end(from_ms, bucket_s), bucket_end(to_ms, bucket_s))
    rows = store.iter_usage(
        scope.workspace, from_ms, to_ms,
        app_id=scope.app_id, app_ids=scope.app_ids, channel=scope.channel,
    )  # fmt: skip
    async with aclosing(rows):
        # Rows arrive by workspace then bucket start, so a (workspace, period) group is
        # complete as soon as the next one begins.
        async for r in rows:
            g = (r.workspace_id, period_start(r.bucket_start, granularity))
            if g != group:
                if group is not None:
                    for key in sorted(acc):
                        yield _usage_record(group[0], group[1], span, key, acc[key])
                group, acc = g, {}
            key = (r.app_id, r.channel, r.product, r.unit)
            prev = acc.get(key)
            cur = _counters(r)
            acc[key] = cur if prev is None else [a + b for a, b in zip(prev, cur, strict=True)]
    if group is not None:
        for key in sorted(acc):
            yield _usage_record(group[0], group[1], span, key, acc[key])


def _session_record(s: SessionRow) -> dict[str, Any]:
    return {
        "workspace_id": s.workspace_id,
        "app_id": s.app_id,
        "channel": s.channel,
        "channel_user": s.channel_user,
        "billing_session_id": s.id,
        "product": s.product,
        "start": export_time(s.start_ms),
        "end": export_time(s.end_ms),
        "messages": s.messages,
        "amount": format_amount(s.amount),
    }


async def _session_records(
    store: Store, from_ms: int, to_ms: int, scope: Scope
) -> AsyncGenerator[dict[str, Any], None]:
    """Billing sessions that started in the range, by workspace, start, id."""
    one = scope.workspace
    for ws in [one] if one is not None else await store.list_workspaces():
        rows = store.iter_sessions(
            ws, from_ms, to_ms, app_id=scope.app_id, app_ids=scope.app_ids, channel=scope.channel
        )
        async with aclosing(rows):
            async for s in rows:
                yield _session_record(s)


def _cell(name: str, value: Any) -> Any:
    """A CSV cell: the channel user, the one text a tenant's channel wrote, formula-safe."""
    return formula_safe(value) if name == "channel_user" and isinstance(value, str) else value


async def encode(
    records: AsyncGenerator[dict[str, Any], None], fields: Iterable[str], fmt: str
) -> AsyncIterator[bytes]:
    """Records as CSV (header row first) or NDJSON (one object a line), in chunks."""
    if fmt not in FORMATS:
        raise InvalidInput("format", "must be csv or ndjson")
    names = list(fields)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\r\n")
    if fmt == "csv":
        writer.writeheader()
    chunk: list[bytes] = [buf.getvalue().encode()] if fmt == "csv" else []
    size = sum(map(len, chunk))
    async with aclosing(records):
        async for rec in records:
            if fmt == "csv":
                buf.seek(0)
                buf.truncate()
                writer.writerow({k: _cell(k, v) for k, v in rec.items()})
                line = buf.getvalue().encode()
            else:
                line = orjson.dumps(rec) + b"\n"
            chunk.append(line)
            size += len(line)
            if size >= 65536:
                yield b"".join(chunk)
                chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def export_stream(
    store: Store,
    *,
    kind: Literal["usage", "sessions"],
    fmt: str,
    from_ms: int,
    to_ms: int,
    granularity: str = "day",
    workspace: str | None = None,
    app_id: str | None = None,
    app_ids: Collection[str] | None = None,
    channel: str | None = None,
    bucket_s: int = 60,
) -> AsyncIterator[bytes]:
    """The whole export as byte chunks (validates the range and format up front).
    ``bucket_s``: the flush bucket width (``FLUSH_BUCKET_S``), for ``covered_*``."""
    check_range(from_ms, to_ms)
    if fmt not in FORMATS:
        raise InvalidInput("format", "must be csv or ndjson")
    scope = Scope(workspace, app_id, app_ids, channel)
    if kind == "sessions":
        return encode(_session_records(store, from_ms, to_ms, scope), SESSION_FIELDS, fmt)
    check_granularity(granularity)
    records = _usage_records(store, from_ms, to_ms, granularity, scope, bucket_s)
    return encode(records, USAGE_FIELDS, fmt)
