"""Text a tenant or a channel wrote, as a CSV cell no spreadsheet runs as a formula.

The one rule of every CSV the project writes (the billing export, the ``/sessions`` CSV,
the console chart's CSV), applied to every cell of such text (channel user ids, app
names); numbers, amounts, times, ids and names the gateway makes are written as they are:

* A cell whose text, after any blanks, invisible characters and double quotes, begins
  with a formula character (``=``, ``+``, ``-``, ``@``, tab, CR, LF) gets a leading ``'``
  (OWASP's CSV injection advice): spreadsheets show it as text. Leading blanks count
  because importers that trim them (Google Sheets, LibreOffice's "trim spaces") would
  otherwise find the formula, and not only the space: any Unicode blank (no-break,
  ideographic), control or format character (NUL, zero-width space, BOM) is one an
  importer may trim or skip; quotes because a quoted cell is unquoted before it is read.
  A formula character counts in any compatibility form (NFKC: full-width ``＝＋－＠``,
  small ``﹦``): a CJK-locale Excel reads them as the ASCII ones.
* So does every ``;`` inside the text that a formula character follows (after the same
  leading characters): a spreadsheet in a locale whose list separator is ``;`` (most of
  Europe's Excel) opens a ``.csv`` by splitting on ``;``, and there the text after it is
  a cell of its own. Quoting the field cannot stop that: such a spreadsheet takes a quote
  for a quote only at the start of a ``;``-cell, which a field in the middle of a comma
  line is not.
* Everything else is RFC 4180 (the :mod:`csv` module quotes ``,``, ``"``, CR and LF).

The text then differs from what the tenant wrote by those ``'``; NDJSON and the JSON API
carry it exactly (use them to match ids by machine).
"""

from __future__ import annotations

import re
import unicodedata

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
# Unicode categories an importer may trim or skip before it reads a cell: controls,
# format characters (zero-width, BOM), and blanks.
_SKIPPED = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Text that cannot start a formula, the common case: decided without a look at each
# character (ASCII letters, digits and the punctuation that is no formula character).
_PLAIN_START = re.compile(r"[A-Za-z0-9_.,:/\\#$%&()*<>?!\[\]^`{|}~']")


def starts_formula(text: str) -> bool:
    """Whether a spreadsheet may read ``text`` as a formula (the rule above)."""
    if not text or _PLAIN_START.match(text):
        return False
    for ch in text:
        if ch in FORMULA_START or unicodedata.normalize("NFKC", ch)[:1] in FORMULA_START:
            return True
        if ch != '"' and unicodedata.category(ch) not in _SKIPPED:
            return False
    return False


def formula_safe(text: str) -> str:
    """``text`` as a CSV cell that a spreadsheet shows and never runs as a formula, under
    a ``,`` or a ``;`` list separator (the rule in this module's docstring)."""
    if ";" in text:
        parts = text.split(";")
        text = ";".join([parts[0], *("'" + p if starts_formula(p) else p for p in parts[1:])])
    return "'" + text if starts_formula(text) else text
