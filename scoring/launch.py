"""`scdr-score`'s entry point: signals are recorded from the first moment, then the CLI runs.

The handler goes in before numpy, numba and onnxruntime load (`scoring` imports them lazily), so
a signal during start-up is recorded and the run stops at its first check. A second signal during
start-up or argument parsing ends the process here: one line, exit 130 and, when `--summary` was
given, a summary with status error, as any interrupted run leaves.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from scdr.scoring import signals
from scdr.scoring.atomic import write_json_atomic

EXIT_INTERRUPTED = 130


def score_main() -> None:
    """Install the signal handler before the heavy imports, then run `scdr-score`."""
    signals.install()
    try:
        from scdr.scoring.cli import score_command

        score_command.main(prog_name="scdr-score", standalone_mode=False)
    except SystemExit as done:  # the run's outcome is decided and reported
        _leave(done.code)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as exc:  # click's own exceptions: usage errors, Abort (--help returns)
        if signals.INTERRUPTED.raised:  # e.g. a C extension's init turned the signal into ImportError
            _interrupted()
        import click

        if isinstance(exc, click.exceptions.Abort):
            _interrupted()
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _leave(code: object) -> None:
    """Exit now with the run's code, skipping interpreter finalisation: it resets the signal
    handlers to their defaults, so a late signal of a burst would turn exit 130 into death by
    signal after everything was written."""
    signals.ignore()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _interrupted() -> None:
    """Report an interruption before the run began: summary if asked for, one line, exit 130."""
    signals.ignore()
    summary = _summary_path(sys.argv[1:])
    if summary is not None:
        with contextlib.suppress(OSError):  # a summary that cannot be written is skipped
            write_json_atomic(summary, {"status": "error", "error": "interrupted",
                                        "exit_code": EXIT_INTERRUPTED})  # fmt: skip
    sys.stderr.write("scdr-score: interrupted; no output written\n")
    _leave(EXIT_INTERRUPTED)


def _summary_path(argv: list[str]) -> Path | None:
    """The --summary argument, read from the raw command line (it may not be parsed yet)."""
    for i, arg in enumerate(argv):
        if arg == "--summary" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--summary="):
            return Path(arg.split("=", 1)[1])
    return None


if __name__ == "__main__":
    score_main()
