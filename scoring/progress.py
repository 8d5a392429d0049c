"""A minimal progress bar on stderr, shown only on a terminal."""

import sys
import time
from collections.abc import Callable


def progress_bar(enabled: bool) -> Callable[[int, int], None] | None:
    """A callback ``(done, total)`` drawing a bar on stderr, or None when not a TTY/disabled."""
    if not enabled or not sys.stderr.isatty():
        return None
    t0 = time.perf_counter()

    def update(done: int, total: int) -> None:
        frac = done / total if total else 1.0
        rate = done / max(time.perf_counter() - t0, 1e-9)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {done:,}/{total:,} cells  {rate:,.0f} cells/s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return update
