"""Progress of a long phase on stderr, with its ETA: a bar on a terminal, a line every 30 s in a log."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("hbt")


def clock(seconds: float, hours: bool = False) -> str:
    """``1:02:03`` / ``2:03``: durations as a user reads them (``hours``: ``0:02:03``, for aligned log columns)."""
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h or hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts done units of a phase and reports them with the time left at the pace so far.

    On a terminal (stderr a TTY) one line is redrawn at most every ``redraw_s``; in a
    log, a line is written every ``every_s``, so a redirected log holds a few lines,
    not a redraw per step. Nothing is shown under ``-q`` (the ``hbt`` logger above
    INFO), nor for a phase that ends before its first report is due.

    Args:
        what: the phase, as the lines name it (``encode``).
        total: units in all.
        unit: what a unit is (``texts``).
        every_s: seconds between log lines.
    """

    def __init__(self, what: str, total: int, unit: str, every_s: float = 30.0, redraw_s: float = 0.5) -> None:
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.done = 0
        self.t0 = time.monotonic()
        self._tty = sys.stderr.isatty()
        self._every = redraw_s if self._tty else every_s
        # The first report comes after a full interval: a phase of a few seconds prints nothing.
        self._next = self.t0 + (every_s if not self._tty else max(redraw_s, 2.0))
        self._drawn = False

    def _quiet(self) -> bool:
        return log.getEffectiveLevel() > logging.INFO

    def text(self, now: float | None = None) -> str:
        """``encode: 1200/5000 texts (24%), 0:40 elapsed, ETA 2:07``."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.t0
        share = self.done / self.total if self.total else 1.0
        eta = elapsed * (1 - share) / share if share > 0 else None
        return (f"{self.what}: {self.done}/{self.total} {self.unit} ({100 * share:.0f}%), {clock(elapsed)} elapsed, "
                f"ETA {clock(eta) if eta is not None else '?'}")

    def update(self, n: int = 1) -> None:
        """Adds ``n`` finished units; reports when a report is due."""
        self.done = min(self.total, self.done + int(n))
        now = time.monotonic()
        if now < self._next or self._quiet():
            return
        self._next = now + self._every
        if self._tty:
            sys.stderr.write(f"\r[hbt] {self.text(now)}\x1b[K")
            sys.stderr.flush()
            self._drawn = True
        else:
            log.info("%s", self.text(now))

    def close(self) -> None:
        """Ends a terminal bar's line (a log needs no closing line)."""
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._drawn = False
