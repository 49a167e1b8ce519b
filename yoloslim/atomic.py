"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the whole new one, never a part.

The bytes go to a temporary file in the target folder, are flushed to disk (`fsync`), the file is then
renamed over the target, and the folder is flushed so that the rename is durable too. The temporary file is created with mode 0o666, so the process umask applies as it
would to any new file, without reading or changing the umask.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically and durably."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write(path: str | Path, write: Callable, suffix: str = "") -> Path:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it over `path`.

    `suffix` is kept at the end of the temporary name for writers that choose a format by extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)
    return path
