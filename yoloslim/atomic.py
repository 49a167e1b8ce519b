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
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically and durably."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically and durably."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def csv_text(fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """`rows` as CSV text with a header of `fieldnames` (other keys ignored)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return table.getvalue()


def atomic_write_csv(path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write `rows` as CSV with a header of `fieldnames` (other keys ignored), atomically and durably."""
    return atomic_write_text(path, csv_text(fieldnames, rows))


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(file)` on a temporary file next to `path`, then move it durably over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staged(path, write)  # flushed to disk already
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def write_set(folder: str | Path, files: Mapping[str, bytes], last: str) -> Path:
    """Write several files into `folder` as one set: a failure at any point leaves the old set or the new one.

    Every file is first written in full and flushed beside its target (out of disk space or an interrupt
    there leaves the old set as it was, and the staged files are removed). The renames then run with Ctrl-C
    held back: `last` (the file whose presence says the set is finished, e.g. a checkpoint) is removed first
    and renamed into place after the others, so a process killed between two renames leaves no `last`, which
    a rerun reads as "not done". Returns the path of `last`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    order = [name for name in files if name != last] + [last]
    staged: dict[str, Path] = {}
    try:
        for name in order:
            data = files[name]
            staged[name] = _staged(folder / name, lambda f, data=data: f.write(data))
        with deferred_interrupt():
            (folder / last).unlink(missing_ok=True)
            for name in order:
                os.replace(staged[name], folder / name)
                del staged[name]
            _fsync_folder(folder)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return folder / last


def _staged(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """A hidden temporary file beside `path` holding what `write` wrote, flushed to disk."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) for the duration of the block and deliver it after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(*caught[0])  # Python's default handler raises KeyboardInterrupt here
        elif caught and previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


@contextmanager
def removed_unless_started(
    folder: str | Path, started: Callable[[Path], bool] = lambda folder: False
) -> Iterator[None]:
    """Remove `folder`, and the parents the block made for it, when the block fails before `started(folder)` holds:
    a run that never started leaves no run folder behind. A folder that was there before the block is never touched.

    Args:
        folder: the run folder the block may create.
        started: whether the folder holds something worth keeping (a training's first checkpoint); by default
            nothing is, and a failed block always removes the folder it made.
    """
    folder = Path(folder).resolve()
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # the folder first, then its new parents
    try:
        yield
    except BaseException:
        if made and not started(folder):
            shutil.rmtree(folder, ignore_errors=True)
            for parent in made[1:]:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or never made): what is above it stays too
                    break
        raise


def durable_replace(source: str | Path, path: str | Path) -> Path:
    """Flush the finished file `source` to disk, rename it over `path` (same file system), flush the folder."""
    with open(source, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(source, path)
    _fsync_folder(Path(path).parent)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so that renames into it reach the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_outputs_apart(outputs: dict[str, Path], inputs: list[Path]) -> None:
    """A one-line error before any work if an output would land on an input or on another output, by any path to it
    (`..`, symlinks, a second name for the same file)."""
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))

    for name, out in outputs.items():
        if clash := next((i for i in inputs if same(out, i)), None):
            raise ValueError(f"{name} '{out}' is the input '{clash}': choose another output file")
    named = list(outputs.items())
    for k, (name, out) in enumerate(named):
        if clash := next((n for n, o in named[k + 1 :] if same(out, o)), None):
            raise ValueError(f"{name} '{out}' and {clash} are the same file: choose another output file")


def check_output_folder(folder: str | Path, flag: str) -> None:
    """A folder that outputs can be written into (or created in): a one-line error before any work if not.

    Writability is probed with a file created and removed at once in the folder, or in its nearest existing
    parent when it is not there yet (permission bits do not tell about read-only mounts or immutable folders).
    """
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} '{folder}': '{existing}' is an existing file, not a folder: choose a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".yoloslim-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} '{folder}' cannot be written ({e.strerror}): choose a writable folder") from None
