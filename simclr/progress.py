"""Progress bars for long work: tqdm on stderr, with the simclr logger's lines written through the bar meanwhile
(tqdm.contrib.logging), so that a warning never breaks a bar."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@contextlib.contextmanager
def progress_bar(**settings) -> Iterator[tqdm]:
    """A tqdm bar (`settings` as tqdm's: total, desc, unit, initial, disable, ...) that resizes with the terminal."""
    with logging_redirect_tqdm(loggers=[logging.getLogger("simclr")]), tqdm(dynamic_ncols=True, **settings) as bar:
        yield bar


def significant(rate: float) -> str:
    """A rate as every command prints one: three significant digits below 100, whole numbers with thousands
    separators above (0.000213, 0.213, 21.3, 213, 2,134), so that a slow run never reads 0."""
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.3g}"


def duration(seconds: float) -> str:
    """A rough duration: 40 s, 14 min, 2.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.2g} h"
