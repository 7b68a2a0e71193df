"""Progress bars that stay readable in a log: tqdm on a terminal, plain lines otherwise.

tqdm redraws its bar with carriage returns, so when the output is a file or a pipe (CI, ``nohup``,
``python train.py > log``) every update is kept: thousands of ``\\r`` updates on one line of the log. When
the bar's stream is not a terminal, :func:`progress` gives a :class:`LineProgress` instead: no bar, one plain
line every ``LOG_EVERY`` seconds (a heartbeat for a long stage, such as the feature cache of a large
dataset), nothing for a stage shorter than that; the stages' own lines (train.py's line per epoch) say
what they did.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

LOG_EVERY = 60.0  # seconds between progress lines when the output is not a terminal


def is_terminal(stream) -> bool:
    """Whether ``stream`` (e.g. sys.stderr) is an interactive terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable=None, *, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0,
             disable: bool = False, leave: bool = True, file=None, every: float = LOG_EVERY):
    """A tqdm bar over ``iterable`` (or updated by hand with ``update``) when ``file`` (default sys.stderr) is a
    terminal, else a :class:`LineProgress` with the same methods (iteration, ``update``, ``set_postfix``,
    ``close``, context manager). The arguments are tqdm's; ``every``: seconds between plain lines."""
    stream = file or sys.stderr
    if disable or is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, disable=disable, leave=leave,
                    file=file)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, initial=initial, file=stream, every=every)


class LineProgress:
    """Progress for a log: ``desc: n/total unit (p%), rate unit/s, elapsed s[, postfix]`` as a line of its own
    at most every ``every`` seconds, written to ``file`` (default sys.stderr). No carriage returns."""

    def __init__(self, iterable=None, desc: str = "", total: int | None = None, unit: str = "it", initial: int = 0,
                 file=None, every: float = LOG_EVERY):
        self.iterable, self.desc, self.unit, self.file, self.every = iterable, desc, unit, file, every
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.started = self.last = time.monotonic()
        self.postfix = ""

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __len__(self):
        return len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=self.file or sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Nothing to erase (tqdm's method)."""

    def line(self, now: float) -> str:
        """The progress line at monotonic time ``now``."""
        elapsed = max(now - self.started, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.start_n) / elapsed
        return (f"{self.desc}: {done} {self.unit}{share}, {rate:.1f} {self.unit}/s, {elapsed:.0f} s"
                + (f", {self.postfix}" if self.postfix else ""))
