"""Does a dataset fit a model's task? Checked before training, so that a pruned segment, pose or OBB model given
a dataset of another task fails at once with a clear message instead of deep inside Ultralytics' loaders (or,
for a detection dataset under a segment model, after a run folder was made).

What a YOLO label line holds tells the task: `cls cx cy w h` (detect), `cls x1 y1 ... x4 y4` (obb, 4 corners),
`cls x1 y1 x2 y2 ...` (segment, a polygon of 3 or more points); pose datasets declare `kpt_shape` in their yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
SAMPLE_FILES = 50  # label files read: enough to tell, cheap on any dataset


def _train_label_files(spec: dict[str, Any], root: Path) -> list[Path]:
    """Up to `SAMPLE_FILES` label files of the train split (Ultralytics' layout: `images/` -> `labels/`); a relative
    `path` is looked up beside the yaml, then in the working directory."""
    base = Path(spec.get("path") or root)
    if not base.is_absolute():
        base = next((b for b in (root / base, base.resolve()) if b.is_dir()), root / base)
    train = spec.get("train") or []
    files: list[Path] = []
    for entry in [train] if isinstance(train, str) else train:
        folder = base / entry
        if not folder.is_dir():
            continue  # a list file or a missing folder: Ultralytics reports those itself
        for image in folder.rglob("*"):  # no sort: stop after a sample, even on a large set
            if image.suffix.lower() in IMAGE_SUFFIXES:
                parts = list(image.with_suffix(".txt").parts)
                if "images" in parts:
                    parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
                    label = Path(*parts)
                    if label.is_file():
                        files.append(label)
            if len(files) >= SAMPLE_FILES:
                return files
    return files


def label_columns(spec: dict[str, Any], root: Path) -> set[int]:
    """The numbers of values per label line found in a sample of the train split's label files (`spec`: the
    dataset yaml's contents, `root`: its folder)."""
    return {
        len(line.split()) for f in _train_label_files(spec, root) for line in f.read_text().splitlines() if line.strip()
    }


def check_data_fits_task(data: str | Path, task: str, model_kpt_shape: Any = None) -> None:
    """Raise a one-line error when the dataset's labels cannot train a `task` model."""
    spec = yaml.safe_load(Path(data).read_text()) or {}
    if task == "pose":
        if list(spec.get("kpt_shape") or []) != list(model_kpt_shape or []):
            raise ValueError(
                f"dataset '{data}' has kpt_shape {spec.get('kpt_shape')} but the pose model predicts "
                f"{list(model_kpt_shape or [])}: give a pose dataset with the model's keypoints"
            )
        return
    if task not in ("segment", "obb"):
        return
    if spec.get("kpt_shape"):
        raise ValueError(
            f"dataset '{data}' is a pose dataset (it declares kpt_shape) but the model is a {task} model: give a "
            f"{task} dataset, or prune a model of this dataset's task"
        )
    columns = label_columns(spec, Path(data).parent)
    if task == "segment" and columns and max(columns) <= 5:
        raise ValueError(
            f"dataset '{data}' has box labels only (cls cx cy w h) but the model is a segment model: give a dataset "
            "with polygon labels, or prune a detection model for this one"
        )
    if task == "obb" and columns and columns != {9}:
        raise ValueError(
            f"dataset '{data}' has labels of {sorted(columns)} values but an OBB model needs 4 corners per box "
            "(cls x1 y1 x2 y2 x3 y3 x4 y4): give an OBB dataset, or prune a model of this dataset's task"
        )
