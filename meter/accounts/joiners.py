"""Where a name may hold a zero-width joiner or non-joiner: in a joining context.

ZWNJ (U+200C) and ZWJ (U+200D) are format characters, refused in names as invisible
(meter/accounts/deps.py), but standard spelling needs them where they change how the
letters around them show: Persian writes ZWNJ inside words (``فن‌آوران``, ``می‌خواهم``),
Sinhala, Devanagari and other Brahmic scripts a ZWJ or ZWNJ after a virama (``ශ්‍රී``).
The rule is RFC 5892's CONTEXTJ: either joiner right after a virama (canonical
combining class 9), and ZWNJ also between a letter that joins on its left and one that
joins on its right, transparent marks aside. Python has no Joining_Type, so the second
holds for the Arabic script's letters of U+0620-06FF and U+0750-077F, with their
joining types from Unicode's ArabicShaping.txt below. Either way a letter must follow:
a joiner alone, leading or trailing (``ന്‍``, a Malayalam chillu in the old encoding,
or one after a final virama that shows nothing) is still refused.
"""

from __future__ import annotations

import unicodedata

ZWNJ = "\u200c"
ZWJ = "\u200d"
JOINERS = frozenset({ZWNJ, ZWJ})
VIRAMA = 9  # canonical combining class
_ARABIC = (range(0x0620, 0x0700), range(0x0750, 0x0780))


def _chars(*spans: tuple[int, int]) -> frozenset[str]:
    return frozenset(chr(c) for a, b in spans for c in range(a, b + 1))


# Letters of those ranges that join on their right only (Joining_Type R) or not at all
# (U); every other letter there joins on both sides (D).
_RIGHT = _chars(
    (0x0622, 0x0625), (0x0627, 0x0627), (0x0629, 0x0629), (0x062F, 0x0632),
    (0x0648, 0x0648), (0x0671, 0x0673), (0x0675, 0x0677), (0x0688, 0x0699),
    (0x06C0, 0x06C0), (0x06C3, 0x06CB), (0x06CD, 0x06CD), (0x06CF, 0x06CF),
    (0x06D2, 0x06D3), (0x06D5, 0x06D5), (0x06EE, 0x06EF), (0x0759, 0x075B),
    (0x076B, 0x076C), (0x0771, 0x0771), (0x0773, 0x0774), (0x0778, 0x0779),
)  # fmt: skip
_NONE = _chars((0x0621, 0x0621), (0x0674, 0x0674))
_NO_LEFT = _RIGHT | _NONE


def _arabic_letter(ch: str | None) -> bool:
    return (
        ch is not None and unicodedata.category(ch) == "Lo" and any(ord(ch) in r for r in _ARABIC)
    )


def _letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "L"


def _past_marks(text: str, i: int, step: int) -> str | None:
    """The first character from ``i`` on (``step`` -1: backwards) that is no mark."""
    while 0 <= i < len(text):
        if unicodedata.category(text[i]) != "Mn":
            return text[i]
        i += step
    return None


def joins(text: str, i: int) -> bool:
    """Whether the joiner ``text[i]`` stands in a joining context (see the module)."""
    if i == 0:
        return False
    if unicodedata.combining(text[i - 1]) == VIRAMA:
        return i + 1 < len(text) and _letter(text[i + 1])
    if text[i] != ZWNJ:
        return False
    left = _past_marks(text, i - 1, -1)
    right = _past_marks(text, i + 1, 1)
    return (
        _arabic_letter(left)
        and left not in _NO_LEFT
        and _arabic_letter(right)
        and right not in _NONE
    )
