"""The console's session cookie names, and what keeps that cookie inside the gateway.

The console (:mod:`gateway.console.session`) signs a browser in with a host-only cookie,
and cookies are not scoped by port: where the console and the traffic routes share a host
name (the README's local setup, ``creditgate demo``), a browser sends the console's cookie
with every request to ``/hooks`` and ``/notify`` too, and takes a cookie a bot's answer
sets as the console's own. So, on every traffic path (both servers, WebSocket upgrades):

* :func:`without_console_cookies`: the console's cookies are removed from each forwarded
  ``Cookie`` header, the other cookies passed as they came; a bot never sees a session;
* :func:`sets_console_cookie`: a bot's ``Set-Cookie`` that mentions the console's cookie
  name anywhere, in any case, is dropped (session fixation).

Both are stricter than a browser: cookie names are case-sensitive, but any case variant,
with or without a ``__Host-``/``__Secure-`` prefix, counts as the console's. This module
imports nothing of the gateway: :mod:`gateway.forwarding` uses it on the hot path.

What no proxy can stop is a bot's page script setting cookies for the shared host name
(``document.cookie``): in production the console belongs on its own host name (README).
"""

from __future__ import annotations

from collections.abc import Iterable

COOKIE = "cg_session"
SECURE_COOKIE = "__Host-cg_session"  # the prefix pins it to this host, path /, Secure
_MARK = COOKIE.lower()
_PREFIXES = ("__host-", "__secure-")
_BLANKS = " \t"


def is_console_name(name: str) -> bool:
    """Whether a cookie named ``name`` would be the console's, in any spelling."""
    low = name.strip(_BLANKS).lower()
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if low.startswith(prefix):
                low, stripped = low[len(prefix) :], True
    return low == _MARK


def mentions_console_cookie(values: Iterable[str]) -> bool:
    """A cheap first test: does any of ``values`` name the console's cookie at all?"""
    return any(_MARK in value.lower() for value in values)


def without_console_cookies(value: str) -> str:
    """A ``Cookie`` header value without the console's cookies ("" when none is left).

    Split on every ``;`` (as browsers write the header; no quoting is honoured, so a
    quote in another cookie's value cannot hide a console cookie behind it), blanks
    around each pair ignored; a pair's name is what comes before its first ``=`` (a pair
    with none is a nameless cookie, its text what a server reads as the name)."""
    if _MARK not in value.lower():
        return value
    kept = [
        pair.strip(_BLANKS)
        for pair in value.split(";")
        if pair.strip(_BLANKS) and not is_console_name(pair.partition("=")[0])
    ]
    return "; ".join(kept)


def console_cookie(lines: Iterable[str], name: str) -> str | None:
    """The value of cookie ``name`` in the ``Cookie`` header ``lines``, read strictly: split
    on every ``;``, the name compared exactly; None when it is missing or sent more than
    once. A lenient parser (aiohttp's ``request.cookies``) reads ``a=1, cg_session=x``
    as two cookies and keeps the last of duplicates: a page script on a shared host name
    could plant either beside the victim's own cookie and sign the victim in as someone
    else. Two are never guessed between."""
    found = [
        value.strip(_BLANKS)
        for line in lines
        for pair in line.split(";")
        for key, eq, value in (pair.partition("="),)
        if eq and key.strip(_BLANKS) == name
    ]
    return found[0] if len(found) == 1 else None


def sets_console_cookie(value: str) -> bool:
    """Whether a ``Set-Cookie`` value could set the console's cookie: it mentions the
    name anywhere. Browsers take a nameless cookie's value (``=cg_session=x``) as the
    pair they send, and lenient parsers (aiohttp's among them) split one cookie's value
    ``a=1, cg_session=x`` into two; a bot has no business naming the console's cookie."""
    return _MARK in value.lower()
