"""Names (workspaces, apps, users, tokens) show as what they say (meter/accounts/deps.py):
none is invisible, holds a line break or an invisible character, or piles combining
marks over the text around; what people write (accents, CJK, RTL scripts, emoji) passes.
Over the API, on both stores: tests/system/test_invitations_review.py."""

from __future__ import annotations

import pytest

from meter.accounts.deps import MAX_MARKS, check_free_text, check_text
from meter.errors import InvalidInput

REFUSED = {
    "line separator U+2028": "pay\u2028ment",
    "paragraph separator U+2029": "a\u2029b",
    "private use U+E000": "\ue000",
    "private use inside": "Acme\ue000",
    "supplementary private use": "a\U000f0000",
    "noncharacter U+FFFF": "a\uffff",
    "noncharacter U+FDD0": "a\ufdd0",
    "noncharacter U+FDEF": "a\ufdef",
    "noncharacter U+1FFFE (past the emoji blocks)": "a\U0001fffe",
    "noncharacter U+10FFFF": "a\U0010ffff",
    "unassigned default-ignorable U+2065": "a\u2065",
    "unassigned default-ignorable U+FFF0": "a\ufff0",
    "unassigned tag plane U+E0080": "a\U000e0080",
    "unassigned tag plane U+E0FFF": "a\U000e0fff",
    "hangul choseong filler U+115F": "\u115f",
    "hangul jungseong filler U+1160": "a\u1160b",
    "hangul filler U+3164": "\u3164",
    "halfwidth hangul filler U+FFA0": "\uffa0\uffa0",
    "braille blank U+2800": "\u2800\u2800",
    "khmer inherent vowel U+17B4": "\u17b4",
    "khmer inherent vowel U+17B5": "x\u17b5",
    "a mark alone": "\u0301",
    "marks and spaces only": "\u0301 \u0302",
    "too many marks": "a" + "\u0301" * (MAX_MARKS + 1),
    "199 marks": "a" + "\u0301" * 199,
    # refused before already: still refused
    "bidi override": "a\u202eb",
    "zero-width joiner": "a\u200db",
    # a joiner outside a joining context (meter/accounts/joiners.py)
    "ZWNJ between latin letters": "a\u200cb",
    "ZWNJ leading": "\u200cفن",
    "ZWNJ trailing after an arabic letter": "فن\u200c",
    "ZWNJ after a right-joining letter (shows nothing)": "دا\u200cن",
    "ZWNJ before hamza (joins on neither side)": "فن\u200cء",
    "ZWNJ between two arabic words": "فن \u200cآ",
    "two ZWNJ": "فن\u200c\u200cآوران",
    "ZWJ between arabic letters (no virama)": "فن\u200dآ",
    "ZWJ after a virama, trailing": "ශ්\u200d",
    "ZWJ after a virama, before a space": "ශ්\u200d ලංකා",
    "ZWJ after a virama, before another joiner": "ශ්\u200d\u200cර",
    "ZWJ lone": "\u200d",
    "ZWJ emoji sequence": "👨\u200d👩\u200d👧",
    "newline": "two\nlines",
    "tag character": "a\U000e0041",
    "mongolian vowel separator": "\u180e",
    # default-ignorable marks (Mn: they show nothing) where they select no variant
    "combining grapheme joiner": "Acme\u034f",
    "combining grapheme joiner inside": "Ac\u034fme",
    "combining grapheme joiner leading": "\u034fAcme",
    "VS1 after a latin letter": "Acme\ufe00",
    "VS14 inside": "Ac\ufe0dme",
    "VS15 after a latin letter": "Acme\ufe0e",
    "VS16 after a latin letter": "Ac\ufe0fme",
    "VS16 leading": "\ufe0fAcme",
    "VS16 doubled after a symbol": "\u2764\ufe0f\ufe0f Support",
    "VS16 after a space": "Acme \ufe0f",
    "VS1 after a symbol (no presentation selector)": "\u2764\ufe00 Support",
    "VS17 after a latin letter": "Acme\U000e0100",
    "VS256 trailing": "Acme\U000e01ef",
    "VS17 leading": "\U000e0100葛城",
    "VS17 doubled after a han ideograph": "葛\U000e0100\U000e0100城",
    "VS17 after a kana": "か\U000e0100",
    "VS16 after a han ideograph": "葛\ufe0f城",
    "mongolian free variation selector one": "Acme\u180b",
    "mongolian free variation selector three": "Ac\u180dme",
    "mongolian free variation selector four": "Acme\u180f",
    "mongolian FVS doubled after a mongolian letter": "\u182d\u180b\u180b",
    "mongolian FVS after a mongolian punctuation": "\u1802\u180b",
    "mongolian FVS after a space": "\u182d \u180c",
}

ACCEPTED = {
    "ascii": "Acme Support",
    "accents (precomposed)": "Café Señor Ærø",
    "accents (decomposed)": "Cafe\u0301",
    "vietnamese": "Nguyễn Thị Phương",
    "vietnamese decomposed": "Vie\u0323\u0302t",
    "cjk": "東京 支社",
    "korean": "한국어 팀",
    "hebrew with points": "שָׁלוֹם",
    "arabic": "مرحبا",
    "devanagari": "क्षत्रिय",
    "thai": "ภาษาไทย",
    "emoji": "Bots 🤖",
    "emoji with a variation selector": "❤️ team",
    "keycap": "1️⃣",
    "emoji with a skin tone": "👍🏽",
    "flag": "🇯🇵",
    "newer emoji than this python's unicode": "\U0001fae8",
    # newer than Unicode 14 (Python 3.11's data calls them unassigned)
    "CJK Extension H (Unicode 15)": "王\U00031350",
    "CJK Extension I (Unicode 15.1)": "\U0002ebf0",
    "Kawi (Unicode 15)": "\U00011f04",
    "an unassigned code point (shows as a box)": "a\u0378",
    "nbsp inside": "a\u00a0b",
    "ideographic space inside": "東京\u3000支社",
    "MAX_MARKS marks": "a" + "\u0301" * MAX_MARKS,
    "object replacement": "\ufffc",
    # joiners in a joining context (RFC 5892 CONTEXTJ)
    "persian ZWNJ": "فن\u200cآوران",
    "persian ZWNJ (another word)": "می\u200cخواهم",
    "persian ZWNJ past a mark": "مُ\u200cحَ",
    "sinhala ZWJ after the virama (Sri Lanka)": "ශ්\u200dරී ලංකා",
    "devanagari ZWJ half form": "क्\u200dष",
    "devanagari ZWNJ after the virama": "क्\u200cष",
    # variation selectors where they select how the character before shows
    "VS16 after a heart": "\u2764\ufe0f Support",
    "VS16 after a telephone": "\u260e\ufe0f Desk",
    "VS15 after a symbol (text style)": "\u260e\ufe0e Desk",
    "VS16 after a math symbol": "\u2194\ufe0f Sync",
    "VS16 after an emoji letter (information)": "\u2139\ufe0f Help",
    "VS16 after punctuation emoji": "Now\u203c\ufe0f",
    "keycap hash": "#\ufe0f\u20e3 Ops",
    "keycap star": "*\ufe0f\u20e3",
    "keycaps in a name": "Team 1\ufe0f\u20e32\ufe0f\u20e3",
    "ideographic variation selector": "葛\U000e0100城",
    "ideographic variation selector 256": "葛\U000e01ef",
    "ideographic variation selector after a compatibility ideograph": "\uf900\U000e0100",
    # Mongolian free variation selectors after a letter pick its form
    "mongolian FVS1 after a letter": "\u182d\u180b",
    "mongolian FVS4 after a letter": "\u1828\u180f\u1820",
    "mongolian word with FVS2": "\u1820\u182e\u180c\u1823",
}


@pytest.mark.parametrize("name", REFUSED.values(), ids=REFUSED.keys())
def test_invisible_or_overstacked_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_text("name", name)
    assert caught.value.field == "name"


@pytest.mark.parametrize("name", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_names_people_write_are_accepted(name: str) -> None:
    assert check_text("name", name) == name


def test_free_text_keeps_what_names_may_not_hold() -> None:
    """An upgrade request's message or a decline's reason is no name: line breaks and
    invisible characters there are not refused (only control and format characters)."""
    for text in ("pay\u2028ment", "\u3164", "a" + "\u0301" * 50, "\ue000"):
        assert check_text("reason", text, 2000, name=False) == text


# Bidi embeddings, overrides, isolates and marks, and the zero-width format characters:
# they reorder or hide what an operator reads in the upgrade queue, the owner in a
# decline's reason. A name refuses them; free text let them through.
FORMAT = {
    **{f"U+{cp:04X}": f"please {chr(cp)}approve" for cp in range(0x202A, 0x202F)},
    **{f"U+{cp:04X}": f"please {chr(cp)}approve" for cp in range(0x2066, 0x206A)},
    "LRM": "a\u200eb",
    "RLM": "a\u200fb",
    "arabic letter mark": "a\u061cb",
    "zero-width space": "a\u200bb",
    "ZWJ between latin letters": "a\u200db",
    "ZWJ after an emoji, before a letter": "\U0001f468\u200da",
    "ZWJ trailing an emoji": "\U0001f468\u200d",
    "ZWJ before an emoji, after a letter": "a\u200d\U0001f469",
    "BOM inside": "a\ufeffb",
    "soft hyphen": "pay\u00adment",
    "tag character": "a\U000e0041",
}


@pytest.mark.parametrize("text", FORMAT.values(), ids=FORMAT.keys())
def test_free_text_refuses_format_characters(text: str) -> None:
    for field in ("reason", "message"):
        with pytest.raises(InvalidInput) as caught:
            check_text(field, text, 2000, name=False)
        assert caught.value.field == field
        with pytest.raises(InvalidInput):
            check_free_text(field, text)


def test_free_text_keeps_joiners_where_they_join() -> None:
    """A joiner inside a word that needs it (Persian, Devanagari) is no format trick:
    kept, as in a name (whose rule, RFC 5892's joining contexts, decides)."""
    for text in ("فن\u200cآوران", "क्\u200dष", "a\n\tb"):
        assert check_free_text("message", text) == text


def test_free_text_keeps_emoji_zwj_sequences() -> None:
    """A family, a profession with a skin tone, a flag: one picture each, kept in free
    text (a name still refuses them: test above)."""
    for text in (
        "thanks \U0001f468\u200d\U0001f469\u200d\U0001f467",
        "\U0001f469\U0001f3fd\u200d\U0001f4bb on it",
        "\U0001f3f3\ufe0f\u200d\U0001f308",
    ):
        assert check_free_text("message", text) == text
