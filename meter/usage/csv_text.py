"""Text a tenant or a channel wrote, as a CSV cell no spreadsheet runs as a formula.

The one rule of every CSV the project writes (the billing export, the ``/sessions`` CSV,
the console chart's CSV), applied to every cell of such text (channel user ids, app
names); numbers, amounts, times, ids and names the gateway makes are written as they are:

* A cell whose text, after any spaces and double quotes, begins with a formula character
  (``=``, ``+``, ``-``, ``@``, tab, CR, LF) gets a leading ``'`` (OWASP's CSV injection
  advice): spreadsheets show it as text. Leading spaces count because importers that trim
  them (Google Sheets, LibreOffice's "trim spaces") would otherwise find the formula;
  quotes because a quoted cell is unquoted before it is read.
* So does every ``;`` inside the text that a formula character follows (after spaces and
  double quotes): a spreadsheet in a locale whose list separator is ``;`` (most of
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

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
_LEAD = ' "'  # what an importer may strip or unquote before it reads a cell
# A ``;`` followed (after any of _LEAD) by a formula character: the ``'`` goes after it.
_CELL_AFTER_SEMICOLON = re.compile(r';(?=[ "]*[=+\-@\t\r\n])')


def formula_safe(text: str) -> str:
    """``text`` as a CSV cell that a spreadsheet shows and never runs as a formula, under
    a ``,`` or a ``;`` list separator (the rule in this module's docstring)."""
    safe = _CELL_AFTER_SEMICOLON.sub(";'", text)
    return "'" + safe if safe.lstrip(_LEAD).startswith(FORMULA_START) else safe
