"""Progress you can watch: a tqdm bar on a terminal, periodic plain lines in logs and pipes.

A bar redrawn with carriage returns turns a log file into one enormous line; off a terminal
the same tqdm meter is written as a whole line at most every PLAIN_INTERVAL_S seconds
(plus the first and the last).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import Iterable, Iterator, TextIO

from tqdm.auto import tqdm

PLAIN_INTERVAL_S = 10.0
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines(io.TextIOBase):
    """tqdm's output as whole lines: each redraw (tqdm starts it with '\\r') becomes one line."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", text):
            part = part.rstrip()
            if part and part != self.last:
                self.stream.write(part + "\n")
                self.last = part
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(
    iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
    enabled: bool = True, stream: TextIO | None = None,
) -> tqdm:
    """A tqdm bar over `iterable` (or to update by hand), drawn as plain lines off a terminal."""
    stream = stream or sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, file=stream)
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=not enabled, file=_Lines(stream),
        mininterval=PLAIN_INTERVAL_S, bar_format=PLAIN_FORMAT,
    )


@contextlib.contextmanager
def quiet_library_bars() -> Iterator[None]:
    """Off a terminal, silence the bars that datasets and transformers draw themselves
    (carriage returns in a log); on a terminal, leave them alone."""
    if is_terminal():
        yield
        return
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    datasets_were_off, transformers_were_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not datasets_were_off:
            enable_progress_bars()
        if transformers_were_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def library_step(desc: str, total: int, unit: str = "it") -> Iterator[None]:
    """Around a library call that draws its own bar (datasets' map): kept on a terminal,
    replaced by a start and an end line elsewhere."""
    if is_terminal():
        yield
        return
    with quiet_library_bars(), progress(desc=desc, total=total, unit=unit) as bar:
        yield
        bar.update(total)
