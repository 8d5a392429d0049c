"""Atomic file publication: a temp file beside the target, the usual permissions, one rename.

Standard library only, so that `scoring.launch` can write an interrupted run's summary before
anything heavy is imported; `scoring.output` builds its tables on the same `publish`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def publish(tmp: Path, target: Path) -> None:
    """Give a finished temp file the usual permissions (mkstemp makes it private) and rename it
    onto ``target`` in one step."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)


def publish_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to a temp file beside ``path`` and publish it there atomically."""
    publish_bytes(path, text.encode("utf-8"))


def publish_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and publish it there atomically."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        publish(Path(name), path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` as indented JSON through a temp file and a rename."""
    publish_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
