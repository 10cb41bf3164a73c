"""What every account operation shares: its dependencies (:class:`Deps`), new ids, the
audit record and change announcement, and the checks of names and URLs."""

from __future__ import annotations

import logging
import re
import secrets
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config import Catalog, Settings
from config.urls import url_origin
from meter.accounts import egress
from meter.accounts.addresses import AddressRefused, EgressRefused
from meter.accounts.joiners import JOINERS, joins
from meter.errors import InvalidInput
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import Store

log = logging.getLogger(__name__)

UNREACHABLE = "resolves to an address this gateway may not reach"
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_NAME = 200
# What a name may not hold (docs/design.md §3): control, format, surrogate, private-use
# characters and line or paragraph separators, by category; characters that show as a
# blank though they are letters or symbols (Hangul fillers, the Braille blank, Khmer's
# inherent vowels); of the code points unassigned in Python's Unicode data (Cn), the
# noncharacters and those reserved as default-ignorable (rendered as nothing once
# assigned: U+2065, U+FFF0-FFF8, U+E0000-E0FFF). Any other Cn is accepted: that data
# lags what people type (Unicode 14 on Python 3.11: CJK Extension H U+31350.., Kawi
# U+11F00.., the emoji U+1FAE8 are newer), and one still unassigned shows as a box.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800\u17b4\u17b5")
_IGNORABLE_RESERVED = (range(0x2065, 0x2066), range(0xFFF0, 0xFFF9), range(0xE0000, 0xE1000))
_PRESENTATION = frozenset("\ufe0e\ufe0f")  # VS15/VS16: text or emoji style
# Emoji with a text and an emoji style that are no symbol (So, Sm): keycap bases,
# ‼ ⁉ ℹ 〰 〽 (Unicode's emoji-variation-sequences.txt).
_EMOJI_BASES = frozenset("#*0123456789\u203c\u2049\u2139\u3030\u303d")
_IDEOGRAPHIC_VS = range(0xE0100, 0xE01F0)  # VS17-256, Ideographic Variation Database
# Mongolian free variation selectors: pick a letter's written form, which Mongolian,
# Todo and Manchu spelling needs (Unicode's StandardizedVariants.txt lists them after
# letters only).
_MONGOLIAN_FVS = frozenset("\u180b\u180c\u180d\u180f")
# Default-ignorable combining marks (Mn, so no category above catches them): the
# combining grapheme joiner, Mongolian free variation selectors and variation selectors
# 1-256 show nothing, "Acme" + VS1 looks like "Acme". Refused but where one selects how
# the character before it shows (:func:`_selects`).
_IGNORABLE_MARKS = (range(0x034F, 0x0350), range(0xFE00, 0xFE10), _IDEOGRAPHIC_VS)
_HAN = ("CJK UNIFIED IDEOGRAPH", "CJK COMPATIBILITY IDEOGRAPH")
# Combining marks one character of a name may carry (several for Vietnamese, Hebrew
# points, a keycap emoji); past it they pile up over the text around (a + 199 accents).
MAX_MARKS = 8
_KEPT = frozenset("\n\t")  # the only control characters free text may hold


@dataclass(frozen=True, slots=True)
class Deps:
    """What account operations work on: the store, Redis and the configuration."""

    store: Store
    redis: RedisClient
    settings: Settings
    catalog: Catalog
    clock: Callable[[], float] = time.time

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


def new_id(prefix: str = "") -> str:
    """A random lowercase id matching ``keys.ID_RE`` (13 characters)."""
    return prefix + secrets.token_hex(6) if prefix else "w" + secrets.token_hex(6)


def check_url(field: str, url: str) -> str:
    """An absolute ``http(s)`` URL, or :class:`InvalidInput` naming ``field``."""
    if len(url) > egress.MAX_URL:
        raise InvalidInput(field, f"longer than {egress.MAX_URL} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidInput(field, "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise InvalidInput(field, "must be an absolute http:// or https:// URL")
    return url


async def check_reachable(d: Deps, field: str, url: str, tenant: str | None = None) -> str:
    """:func:`check_url`, then the egress policy (docs/design.md §3): the URL's host, resolved
        now, may not be loopback, private, link-local or the gateway's own address unless the
        operator allows it (checked again at every connection). A refused address is not named
    in the answer (:data:`UNREACHABLE`), only in the operator's log (INFO). The name is
    looked up within workspace ``tenant``'s share of lookups (meter/accounts/names.py)."""
    check_url(field, url)
    policy = egress.Policy.from_settings(d.settings)
    try:
        await policy.check_url(url, resolve_s=d.settings.upstream_connect_timeout_s, tenant=tenant)
    except AddressRefused as exc:
        # Which address, and why, would map internal names for the tenant: the operator's
        # log has it.
        log.info("%s %s refused by the egress policy: %s", field, url_origin(url), exc)
        raise InvalidInput(field, UNREACHABLE) from None
    except EgressRefused as exc:  # the URL's form: nothing the tenant did not write
        raise InvalidInput(field, f"may not be reached: {exc}") from None
    return url


def check_text(field: str, value: str, limit: int = MAX_NAME, *, name: bool = True) -> str:
    """``value`` stripped, non-empty and at most ``limit`` characters; a ``name`` (shown to
    other users, invitees included, before they consent to anything) must pass
    :func:`check_name`: no control or format character (newlines, bidi overrides,
    zero-width characters), line separator or other invisible character, which could
    make it pass for another text or for none; other text is :func:`check_free_text`.
    The length is counted once ``\r\n`` became ``\n``."""
    value = value.replace("\r\n", "\n").strip()
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > limit:
        raise InvalidInput(field, f"longer than {limit} characters")
    if name:
        check_name(field, value)
    return check_free_text(field, value)


def _hidden(ch: str) -> bool:
    category = unicodedata.category(ch)
    if category == "Cn":
        cp = ord(ch)
        noncharacter = 0xFDD0 <= cp <= 0xFDEF or cp & 0xFFFE == 0xFFFE
        return noncharacter or any(cp in r for r in _IGNORABLE_RESERVED)
    return category in _HIDDEN or ch in _BLANK


def _selects(value: str, i: int) -> bool:
    """Whether the variation selector ``value[i]`` follows a character it picks a style
    or glyph of: VS15/VS16 a symbol or emoji (``❤️``, keycap ``1️⃣``), VS17-256 a Han
    ideograph (``葛󠄀``), a Mongolian free variation selector a Mongolian letter."""
    if i == 0:
        return False
    ch, base = value[i], value[i - 1]
    if ch in _PRESENTATION:
        return unicodedata.category(base) in ("So", "Sm") or base in _EMOJI_BASES
    if ch in _MONGOLIAN_FVS:
        return unicodedata.name(base, "").startswith("MONGOLIAN LETTER")
    return ord(ch) in _IDEOGRAPHIC_VS and unicodedata.name(base, "").startswith(_HAN)


def _invisible(value: str, i: int) -> bool:
    ch = value[i]
    if ch in JOINERS:
        return not joins(value, i)
    if ch in _MONGOLIAN_FVS or any(ord(ch) in r for r in _IGNORABLE_MARKS):
        return not _selects(value, i)
    return _hidden(ch)


def check_name(field: str, value: str) -> None:
    """:class:`InvalidInput` unless ``value`` shows as what it says: no hidden character
    (:data:`_HIDDEN`; a zero-width joiner or non-joiner only in a joining context, see
    :mod:`meter.accounts.joiners`; a variation selector only where it selects, see
    :func:`_selects`), at least one visible one (not a space, mark or blank), and at
    most :data:`MAX_MARKS` combining marks in a row."""
    if any(_invisible(value, i) for i in range(len(value))):
        raise InvalidInput(field, "must not contain control, format or invisible characters")
    marks = 0
    visible = False
    for ch in value:
        category = unicodedata.category(ch)
        marks = marks + 1 if category[0] == "M" else 0
        if marks > MAX_MARKS:
            raise InvalidInput(field, f"more than {MAX_MARKS} combining marks on one character")
        visible = visible or (category[0] not in "MZ" and ch not in _BLANK)
    if not visible:
        raise InvalidInput(field, "must contain a visible character")


def check_free_text(field: str, value: str) -> str:
    """``value`` with its ``\r\n`` line ends as newlines (as a browser's text area or
    a Windows client sends them), if it then holds no control character but newline and
    tab (Unicode Cc: NUL, which PostgreSQL cannot store in text, escapes, a carriage
    return alone, which overwrites a terminal's line), lone surrogate, nor format
    character (Cf) that :func:`check_name` refuses (:func:`_invisible`: bidi embeddings,
    overrides and isolates U+202A-U+202E, U+2066-U+2069 and marks, which reorder what
    the operator or the owner reads; zero-width characters, a joiner outside a joining
    context): the same text on every store, and no terminal escape nor text displayed
    out of order in a log, a list or an export. Unlike a name, it may hold line and
    paragraph separators, private-use characters, fillers, stacked marks and emoji
    joined by a zero-width joiner (:func:`_emoji_join`)."""
    value = value.replace("\r\n", "\n")
    for i, ch in enumerate(value):
        category = unicodedata.category(ch)
        if ch in _KEPT or category not in ("Cc", "Cs", "Cf"):
            continue
        if category != "Cf" or (_invisible(value, i) and not _emoji_join(value, i)):
            raise InvalidInput(
                field, "must not contain control or format characters (but newline and tab)"
            )
    return value


def _emoji_join(value: str, i: int) -> bool:
    """Whether ``value[i]`` is a zero-width joiner between two emoji (a family, a
    profession, a flag: one picture, shown as such), allowed in free text though not in
    a name; skin tones and the emoji presentation selector may follow the first."""
    if value[i] != "\u200d" or i + 1 >= len(value):
        return False
    j = i - 1
    while j >= 0 and (value[j] == "\ufe0f" or "\U0001f3fb" <= value[j] <= "\U0001f3ff"):
        j -= 1
    return j >= 0 and unicodedata.category(value[j]) == unicodedata.category(value[i + 1]) == "So"


async def audit(d: Deps, actor: str, action: str, target: str, before: Any, after: Any) -> None:
    await d.store.add_audit(actor, action, target, before, after, at=d.now_ms())


async def announce(d: Deps, ident: str) -> None:
    """Tell caches in every worker that the config of an app or workspace changed."""
    await d.redis.publish(keys.CHANGES, ident)
