"""Amounts in the console's charts are exact, as the chart's CSV is: one rule, from
integers, never a float rounded to cents (15000 micro-dollars was "$0.01" and 25000
"$0.03": binary floats round sub-cent halves either way)."""

from __future__ import annotations

import re

import pytest

from config.money import format_amount
from gateway.console import charts

CASES = {
    0: "$0.00",
    5_000: "$0.005",
    15_000: "$0.015",
    25_000: "$0.025",
    1_234_565: "$1.234565",
    -150_000: "-$0.15",
    -1: "-$0.000001",
    200_000: "$0.20",
    123_456_789_000_000: "$123,456,789.00",
    9_007_199_254_740_993: "$9,007,199,254.740993",  # past a double's exact integers
}


@pytest.mark.parametrize("micros", CASES)
def test_a_chart_amount_is_exact(micros: int) -> None:
    assert charts.money(micros) == CASES[micros]
    # the CSV's figure, with a dollar sign and thousands separators
    assert charts.money(micros).replace("$", "").replace(",", "") == format_amount(micros)


def test_the_svg_says_the_csvs_figures() -> None:
    values = [15_000, 25_000, 35_000]
    svg = charts.bars([0, 86_400_000, 172_800_000], {"total": values},
                      granularity="day", is_money=True, title="Amount per day")  # fmt: skip
    tips = re.findall(r"<title>total: (\S+) ", svg)
    assert tips == ["$0.015", "$0.025", "$0.035"]
