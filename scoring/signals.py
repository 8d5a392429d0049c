"""SIGINT and SIGTERM for scdr-score: the first is recorded, the streaming loop acts on it.

Light on purpose (standard library only): `scoring.launch` installs the handler before anything
heavy is imported, so a signal during start-up is recorded too. The flag is a plain attribute,
not a threading.Event: Event.set() takes a lock, and a second signal landing while the first
handler holds it (coreutils `timeout` signals the child and its group, so two arrive together)
deadlocks. Raised where it lands (inside a JIT compiler's clean-up, a destructor), a signal can
leave a library half torn down, so the first one only records; a second raises at once.
"""

from __future__ import annotations

import signal
from types import FrameType


class SignalFlag:
    """A flag a signal handler may set: plain attributes, no lock."""

    __slots__ = ("armed", "raised")

    def __init__(self) -> None:
        self.raised = False
        self.armed = True  # a second signal raises, once

    def is_set(self) -> bool:
        """Whether a signal was recorded."""
        return self.raised

    def set(self) -> None:
        """Record a signal."""
        self.raised = True

    def clear(self) -> None:
        """Forget a recorded signal (end of a run)."""
        self.raised = False
        self.armed = True


INTERRUPTED = SignalFlag()


def record(signum: int, frame: FrameType | None) -> None:
    """The handler: record the first signal; raise KeyboardInterrupt on the second, once (a
    burst's later signals must not interrupt the handling of that KeyboardInterrupt)."""
    if INTERRUPTED.raised and INTERRUPTED.armed:
        INTERRUPTED.armed = False
        raise KeyboardInterrupt
    INTERRUPTED.raised = True


def install() -> None:
    """Route SIGINT and SIGTERM to `record`."""
    signal.signal(signal.SIGTERM, record)
    signal.signal(signal.SIGINT, record)


def ours(handlers: tuple[object, object]) -> bool:
    """Whether `handlers` (from `current`) are this module's."""
    return handlers == (record, record)


def current() -> tuple[object, object]:
    """The SIGINT and SIGTERM handlers in place (for `restore`)."""
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def restore(handlers: tuple[object, object]) -> None:
    """Put back handlers returned by `current`."""
    signal.signal(signal.SIGINT, handlers[0])  # type: ignore[arg-type]
    signal.signal(signal.SIGTERM, handlers[1])  # type: ignore[arg-type]


def ignore() -> None:
    """Ignore further signals (while the summary and the error line are written)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
