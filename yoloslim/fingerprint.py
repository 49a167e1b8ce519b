"""What a run folder was made from: each input by its resolved path and a digest of its content.

A resumed run must not mix inputs: the same `--data d2/data.yaml` typed in another folder can be another dataset,
and the same file typed by another path is the same input. So a run folder records, for the start weights and the
dataset, the resolved path and digests: a checkpoint's bytes; a dataset yaml's bytes, and the names and sizes of the
images and labels its splits hold (cheap: no image is read), found by Ultralytics' own rules for where a yaml's
splits are. Files Ultralytics writes beside them (label caches, `cache=disk` arrays) are not the dataset.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

CHUNK = 1 << 20
SPLITS = ("train", "val", "test", "minival")
INPUTS = ("weights", "data")  # what `inputs` records
DATA_SUFFIXES = frozenset({f".{s}" for s in IMG_FORMATS} | {".txt"})  # images and YOLO labels


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _labels_of(images: Path) -> Path:
    """The labels folder Ultralytics reads for an images folder: the last `/images/` of the path made `/labels/`."""
    head, sep, tail = f"{images}/".rpartition("/images/")
    return Path(f"{head}/labels/{tail}") if sep else images


def _listing(split: Path) -> list[str]:
    """The names and sizes of the images and labels a split holds: a folder (with its labels folder), or a text file
    of image paths (its own bytes: the images it lists are not followed)."""
    if split.is_file():
        return [f"{split.name}:{file_digest(split)}"]
    folders = {split, _labels_of(split)} if split.is_dir() else set()
    files = ((f, p) for f in folders for p in f.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
    return sorted(f"{p.relative_to(folder.parent)}:{p.stat().st_size}" for folder, p in files)


def dataset_digests(data: str | Path) -> dict[str, str | None]:
    """Digests of a dataset: `yaml`, of its yaml's bytes (or its folder's listing, for a classification folder), and
    `files`, of the listing of every split it names as training will resolve them (`check_det_dataset`); None when
    they cannot be resolved yet (images not there, or not a detection-style yaml)."""
    data = Path(data)
    if data.is_dir():
        return {"yaml": hashlib.sha256("\n".join(_listing(data)).encode()).hexdigest(), "files": None}
    digests: dict[str, str | None] = {"yaml": file_digest(data), "files": None}
    try:
        spec: dict[str, Any] = check_det_dataset(str(data), autodownload=False)
    except Exception:  # images not there yet, or a yaml only another task reads: the yaml's bytes alone
        return digests
    splits = [Path(p) for k in SPLITS for p in ([spec[k]] if isinstance(spec.get(k), str) else spec.get(k) or [])]
    digests["files"] = hashlib.sha256("\n\n".join("\n".join(_listing(s)) for s in splits).encode()).hexdigest()
    return digests


def inputs(weights: str | Path, data: str | Path) -> dict[str, dict[str, Any]]:
    """The start weights and the dataset of a run: resolved path and digests (a model yaml such as yolov8n.yaml that
    is not a file here is Ultralytics' own: its name is its identity)."""
    weights_path, data_path = Path(weights), Path(data)
    return {
        "weights": (
            {"path": str(weights_path.resolve()), "yaml": file_digest(weights_path), "files": None}
            if weights_path.is_file()
            else {"path": str(weights), "yaml": str(weights), "files": None}
        ),
        "data": {"path": str(data_path.resolve()), **dataset_digests(data_path)},
    }


def differs(recorded: dict[str, Any], made: dict[str, Any]) -> bool:
    """Whether two records of one input are different content: their `yaml` digests differ, or both resolved their
    files and those differ (a set whose images were not there yet is compared by its yaml alone)."""
    if recorded.get("yaml") != made.get("yaml"):
        return True
    return None not in (recorded.get("files"), made.get("files")) and recorded["files"] != made["files"]
