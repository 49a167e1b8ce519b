"""What every bench script shares: one parser for the common flags, one way to emit a table, the batch size.

Flags: `--data`, `--imgsz`, `--run-dir` (where runs and artifacts go, and are reused), `--repeats` (timed runs per
model), `--out` (the table as Markdown; stdout always gets it too). Paths printed in a table are relative to the
repository, so that a table written on one machine reads the same on another.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from scipy import stats

from yoloslim.atomic import atomic_write_csv, atomic_write_text
from yoloslim.report import markdown_table

BATCH = 16  # every bench training stage; nbs is set to it too (one optimizer step per batch)
REPO = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # the ones onnxruntime's int8 kernels use


def parser(
    doc: str,
    *,
    data: bool | str | None = None,
    imgsz: int | list[int] | None = None,
    run_dir: str | None = None,
    repeats: int | None = None,
    beside: str = "",
) -> argparse.ArgumentParser:
    """A parser with `--out` and the shared flags the script takes: `data` True (required) or a default, `imgsz` a
    default (a list: several sizes), `run_dir` and `repeats` their defaults; a flag left None is not added. `beside`
    names what the script also writes next to `--out` (e.g. "a CSV")."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if data is not None:
        p.add_argument("--data", required=data is True, default=None if data is True else data, help="dataset yaml")
    if imgsz is not None:
        several = isinstance(imgsz, list)
        p.add_argument("--imgsz", type=int, nargs="+" if several else None, default=imgsz, help="image size(s)")
    if run_dir is not None:
        p.add_argument("--run-dir", type=Path, default=Path(run_dir), help="runs and artifacts, reused when there")
    if repeats is not None:
        p.add_argument("--repeats", type=int, default=repeats, help="timed runs per model")
    more = f" ({beside} is written beside it)" if beside else ""
    p.add_argument("--out", type=markdown_file, help=f"also write the table(s) to this Markdown file{more}")
    return p


def markdown_file(value: str) -> Path:
    """An `--out` value: a `.md` file, so that what is written matches its name, and neither lands on an input (a
    checkpoint, a dataset yaml) nor shares a file with the CSV written beside it."""
    if Path(value).suffix.lower() != ".md":
        raise argparse.ArgumentTypeError(f"'{value}' is not a .md file: give the Markdown file to write, e.g. table.md")
    return Path(value)


def shown(path: str | Path) -> str:
    """`path` as a table shows it: relative to the repository when inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def emit(caption: str, columns: Sequence[str], rows: Iterable[Sequence[object]], out: Path | None) -> str:
    """Print a caption and a Markdown table; also write them to `out` when given. Returns the text."""
    text = f"{caption}\n\n{markdown_table(columns, list(rows))}"
    print(text)
    if out:
        atomic_write_text(out, text)
    return text


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Every figure behind a table, one record per row, for other tools to read; written as the Markdown is
    (atomically: a symlink at `path` is replaced, never written through)."""
    atomic_write_csv(path, header, (dict(zip(header, row, strict=True)) for row in rows))


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t interval (the interval is the mean itself for one pair)."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Difference of the means of two unpaired samples and its two-sided Welch t interval (the difference itself when
    either sample has one value: no spread to judge by)."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, diff, diff
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * (va + vb) ** 0.5
    return diff, diff - half, diff + half


def cpu() -> str:
    """The CPU's model name, which of `FLAGS` it has, and the CPUs this process may use."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines())}  # last CPU's
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    shown_flags = " ".join(f"{f}{'+' if f in flags else '-'}" for f in FLAGS) if flags else "flags unknown"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({shown_flags}), {cpus} CPUs"


def commit() -> str:
    """The repository's commit, `+changes` when its tracked files differ from it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        return "unknown commit"
    return head.stdout.strip() + ("+changes" if git("diff", "--quiet", "HEAD").returncode else "")
