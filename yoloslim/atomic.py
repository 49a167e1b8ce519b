"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the whole new one, never a part.

The bytes go to a temporary file in the target folder and are flushed to disk (`fsync`); the file is then
renamed over the target, and the folder is flushed so that the rename is durable too. The temporary file is
created with mode 0o666, so the process umask applies as it would to any new file, without reading or
changing the umask.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically and durably."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write `rows` as CSV with a header of `fieldnames` (other keys ignored), atomically and durably."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, table.getvalue())


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(file)` on a temporary file next to `path`, then move it durably over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def durable_replace(source: str | Path, path: str | Path) -> Path:
    """Flush the finished file `source` to disk, rename it over `path` (same file system), flush the folder."""
    with open(source, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(source, path)
    folder = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)
    return Path(path)
