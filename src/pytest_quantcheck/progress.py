"""Live progress of long steps (decoding a model's chunks, scoring its tasks) on a terminal: one
line per step, rewritten in place as chunks are done, so a pass of minutes shows it is alive.

Only where a person watches: the pytest plugin and the ``quantcheck`` command create one for an
interactive terminal (not under ``-q``, not in a CI log, not on a pytest-xdist worker, whose
output nobody sees); everywhere else a step runs with no progress at all. No pytest here: the
caller hands in how to write.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Progress = Callable[[int, int], None]  # (done, total), called as a step goes


class LiveProgress:
    """Writes ``quantcheck: <step>: <done>/<total> <unit>, <seconds> s`` on a line of its own
    and rewrites it at most every ``every`` seconds (and at the end of the step)."""

    def __init__(self, write_line: Callable[[str], object], rewrite: Callable[[str], object],
                 newline: Callable[[], object], clock: Callable[[], float] = time.monotonic,
                 every: float = 0.5) -> None:
        self._write_line, self._rewrite, self._newline = write_line, rewrite, newline
        self._clock, self._every = clock, every
        self._open = False  # a progress line is on the screen, not yet ended

    def step(self, what: str, unit: str = "chunks") -> Progress:
        """The callback of one step (``what``: "perplexity of Q4_K_M, chunks 9-16")."""
        start = self._clock()
        last = -float("inf")

        def report(done: int, total: int) -> None:
            nonlocal last
            now = self._clock()
            if now - last < self._every and done < total:
                return
            last = now
            line = f"quantcheck: {what}: {done}/{total} {unit}, {now - start:.0f} s"
            if self._open:
                self._rewrite(line)
            else:
                self._write_line(line)
                self._open = True

        return report

    def end(self) -> None:
        """The step is over: the next output starts on a new line."""
        if self._open:
            self._newline()
            self._open = False
