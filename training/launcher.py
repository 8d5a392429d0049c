"""`scdr-train`'s entry point: one line naming the `train` extra when it is not installed."""

from __future__ import annotations

import sys

EXTRA_HINT = (
    "pip install torch==2.13.0 && pip install 'scdr[train]' (from a checkout: pip install \".[train]\")"
)


def main() -> None:
    """Run the training CLI, or exit 2 with one line when its dependencies are missing."""
    try:
        from scdr.training.cli import main as cli_main
    except ImportError as exc:
        missing = exc.name or str(exc)
        sys.stderr.write(f"scdr-train: error: training needs the 'train' extra ({missing} is not "
                         f"installed): {EXTRA_HINT}\n")
        raise SystemExit(2) from None
    cli_main()


if __name__ == "__main__":
    main()
