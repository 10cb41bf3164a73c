"""short_memo: remembered up to its bounds, in count and in the length of a value."""

from __future__ import annotations

from gateway.memo import short_memo


def test_short_values_are_remembered_within_the_count_bound() -> None:
    calls: list[str] = []

    @short_memo(maxsize=8, max_len=4)
    def upper(value: str) -> str:
        calls.append(value)
        return value.upper()

    assert upper("ab") == "AB"
    assert upper("ab") == "AB"
    assert calls == ["ab"]
    for n in range(100):  # a client varying the value
        assert upper(f"{n:02d}") == f"{n:02d}"
    info = upper.cache_info()
    assert info.currsize == info.maxsize == 8


def test_a_long_value_is_worked_out_each_time_and_never_kept() -> None:
    calls: list[str] = []

    @short_memo(maxsize=8, max_len=4)
    def upper(value: str) -> str:
        calls.append(value)
        return value.upper()

    assert upper("abcde") == "ABCDE"
    assert upper("abcde") == "ABCDE"
    assert calls == ["abcde", "abcde"]
    assert upper.cache_info().currsize == 0
    assert upper("abcd") == "ABCD"  # at the bound: kept
    assert upper.cache_info().currsize == 1
