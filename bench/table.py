"""The Markdown table every bench script prints (and writes with `--out`)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from yoloslim.atomic import atomic_write_text
from yoloslim.report import markdown_table


def emit(caption: str, columns: Sequence[str], rows: Iterable[Sequence[object]], out: Path | None) -> str:
    """Print a caption and a Markdown table; also write them to `out` when given. Returns the text."""
    text = f"{caption}\n\n{markdown_table(columns, list(rows))}"
    print(text)
    if out:
        atomic_write_text(out, text)
    return text


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Every figure behind a table, one record per row, for other tools to read."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
