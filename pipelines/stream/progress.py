"""Progress of long work: a live bar (tqdm) on a terminal, plain periodic log lines without one.

A terminal gets what is done, what is left, the rate and the time to go, redrawn in place; a
CI log or a redirected stream gets one INFO line every `every_s` seconds and one at the end,
so a log never fills with carriage returns and a silent minute always means something.

    with Progress("producing the night", total=len(records), unit="records") as progress:
        for record in records:
            ...
            progress.update(1)        # or progress.set(done) where the position is known
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("viewcount.progress")


class Progress:
    """Counts work done against an optional total; `close()` (or leaving the `with`) reports the end."""

    def __init__(self, description: str, total: int | None = None, unit: str = "records",
                 every_s: float = 10.0, stream: TextIO | None = None, interactive: bool | None = None):
        self.description = description
        self.total = total
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self._stream = stream or sys.stderr
        self._started = time.monotonic()
        self._last_line = self._started
        self._closed = False
        if interactive is None:
            interactive = bool(getattr(self._stream, "isatty", lambda: False)())
        self._bar = tqdm(total=total, desc=description, unit=f" {unit}", unit_scale=True, file=self._stream,
                         dynamic_ncols=True, leave=True) if interactive else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def update(self, increment: int = 1) -> None:
        self.set(self.done + increment)

    def set(self, done: int) -> None:
        """The position now (absolute): e.g. records consumed so far."""
        if self._bar is not None:
            self._bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            log.info(self.line())

    def set_total(self, total: int | None) -> None:
        """The total became known, or changed (e.g. more records arrived)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def line(self) -> str:
        """One plain line: done/total (share), rate, what is left and the time to go."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.description}: {self.done:,}"
        if self.total:
            left = max(self.total - self.done, 0)
            text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f} %), {left:,} left"
            if rate > 0 and left:
                text += f", about {tqdm.format_interval(left / rate)} to go"
        else:
            text += f" {self.unit}"
        return text + f", {rate:,.0f} {self.unit}/s, {tqdm.format_interval(elapsed)} elapsed"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            log.info(self.line())

