"""Rates and times as every command prints them: `significant` keeps three significant digits, so a slow run never
reads 0; `duration` reads in the unit that fits."""

from __future__ import annotations

import pytest

from simclr.progress import duration, significant


@pytest.mark.parametrize(("rate", "shown"), [(0.2, "0.2"), (0.2134, "0.213"), (0.0004567, "0.000457"),
                                             (12.74, "12.7"), (99.94, "99.9"), (213.4, "213"), (1234.4, "1,234"),
                                             (21_345.6, "21,346"), (0.0, "0")])
def test_rates_keep_three_significant_digits(rate: float, shown: str) -> None:
    assert significant(rate) == shown


@pytest.mark.parametrize(("seconds", "text"), [(40, "40 s"), (14 * 60, "14 min"), (2.5 * 3600, "2.5 h")])
def test_durations_read_in_the_unit_that_fits(seconds: float, text: str) -> None:
    assert duration(seconds) == text
