"""What a run folder was made from: each input by its resolved path and a digest of its content.

A resumed run must not mix inputs: the same `--data d2/data.yaml` typed in another folder can be another dataset,
and the same file typed by another path is the same input. So a run folder records, for the start weights and the
dataset, the resolved path and a digest: a checkpoint's bytes; a dataset yaml's bytes and the names and sizes of
every file its splits list (cheap: no image is read), found by Ultralytics' own rules for where a yaml's splits are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ultralytics.data.utils import check_det_dataset

CHUNK = 1 << 20
SPLITS = ("train", "val", "test")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _listing(split: Path) -> list[str]:
    """The relative names and sizes of the files a split names: a folder (with its labels folder beside it) or a
    text file of image paths (its own bytes)."""
    if split.is_file():
        return [f"{split.name}:{file_digest(split)}"]
    folders = [split, Path(str(split).replace("/images", "/labels"))] if split.is_dir() else []
    files = ((f, p) for f in folders for p in f.rglob("*") if p.is_file() and p.suffix != ".cache")
    return sorted(f"{p.relative_to(folder.parent)}:{p.stat().st_size}" for folder, p in files)


def dataset_digest(data: str | Path) -> str:
    """SHA-256 of a dataset yaml's bytes and of the listing of every split it names (`check_det_dataset` resolves
    them as training will). A yaml Ultralytics cannot resolve (or a classification folder) is digested by its own
    bytes, or its listing."""
    data = Path(data)
    digest = hashlib.sha256(data.read_bytes() if data.is_file() else b"")
    try:
        spec: dict[str, Any] = check_det_dataset(str(data), autodownload=False)
        splits = [Path(p) for k in SPLITS for p in ([spec[k]] if isinstance(spec.get(k), str) else spec.get(k) or [])]
    except Exception:  # not a detection-style yaml: its bytes (or folder listing) alone
        splits = [data] if data.is_dir() else []
    for split in splits:
        digest.update("\n".join(_listing(split)).encode())
    return digest.hexdigest()


def inputs(weights: str | Path, data: str | Path) -> dict[str, dict[str, str]]:
    """The start weights and the dataset of a run: resolved path and digest (a model yaml such as yolov8n.yaml that
    is not a file here is Ultralytics' own: its name is its identity)."""
    weights_path, data_path = Path(weights), Path(data)
    return {
        "weights": (
            {"path": str(weights_path.resolve()), "digest": file_digest(weights_path)}
            if weights_path.is_file()
            else {"path": str(weights), "digest": str(weights)}
        ),
        "data": {"path": str(data_path.resolve()), "digest": dataset_digest(data_path)},
    }
