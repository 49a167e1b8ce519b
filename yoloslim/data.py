"""A deterministic synthetic detection dataset (YOLO format) for the demo and the tests.

Slimming needs a dataset to train, prune and fine-tune on, and the demo and tests must run offline and
fast. `demo_dataset` draws filled circles, squares and triangles on textured backgrounds: small enough
to generate in seconds, hard enough that a detector has to learn something. The same parameters always
give the same bytes, since every image draws from its own random generator seeded by (seed, split, index).

The dataset is cached. It is built in a temporary sibling folder that holds its completion marker before
it is renamed into place, so an interrupted run never leaves a half dataset that a later run would
reuse, and two processes building the same dataset at once both end up with one complete copy.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from ultralytics.data import YOLODataset, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import IterableSimpleNamespace

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")

_SPLITS = ("train", "val")  # their index in this tuple seeds their images, so the order is fixed
_MARKER = ".complete"  # written last: a folder without it (or with an older version's) is rebuilt
_MARKER_TEXT = "yoloslim demo dataset, format 1\n"  # bump when the generator's output changes
_SIZE_RANGE = (0.12, 0.45)  # shape size as a fraction of the image side
_MAX_SHAPES = 4
_MAX_OVERLAP = 0.3  # a placement covering more than this of an earlier box, or of itself, is rejected...
_PLACEMENT_TRIES = 30  # ...and retried this often before the shape is dropped
_MIN_CONTRAST = 60.0  # least luma difference between a shape and the background under it
_JPEG_QUALITY = 95


def _cache_root(root: str | Path | None) -> Path:
    """Where datasets are cached: `root`, else $YOLOSLIM_CACHE, else ~/.cache/yoloslim."""
    base = root if root is not None else os.environ.get("YOLOSLIM_CACHE") or Path.home() / ".cache" / "yoloslim"
    return Path(base).expanduser().resolve()


def _is_complete(folder: Path) -> bool:
    """Whether `folder` holds a dataset that this version of the generator finished writing."""
    marker = folder / _MARKER
    return marker.is_file() and marker.read_text() == _MARKER_TEXT


def _background(rng: np.random.Generator, imgsz: int) -> np.ndarray:
    """A textured BGR background: base colour + linear gradient + smooth blobs + fine grain."""
    base = rng.uniform(40, 215, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    coords = np.arange(imgsz) / imgsz - 0.5
    ramp = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]  # in [-0.71, 0.71]
    gradient = ramp[..., None] * rng.uniform(-80, 80, size=3)
    cells = int(rng.integers(3, 9))
    blobs = cv2.resize(rng.normal(0, 1, size=(cells, cells, 3)), (imgsz, imgsz), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, rng.uniform(2, 8), size=(imgsz, imgsz, 3))
    image = base + gradient + blobs * rng.uniform(10, 35) + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def _luma(bgr: np.ndarray) -> np.ndarray:
    """Perceived brightness of BGR colours (ITU-R BT.601 weights)."""
    return bgr @ np.array([0.114, 0.587, 0.299])


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A random BGR colour whose brightness differs clearly from the mean of the pixels `under` it."""
    background = float(_luma(under.reshape(-1, 3).mean(axis=0)))
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if abs(float(_luma(colour)) - background) >= _MIN_CONTRAST:
            return tuple(int(c) for c in colour)
    return (0, 0, 0) if background >= 128 else (255, 255, 255)  # always >= 127 luma away


def _shape_mask(rng: np.random.Generator, cls: int, imgsz: int) -> np.ndarray:
    """A 0/255 mask of one filled shape of class `cls`, at a random size and position inside the image."""
    size = int(rng.integers(round(_SIZE_RANGE[0] * imgsz), round(_SIZE_RANGE[1] * imgsz) + 1))
    x0, y0 = (int(v) for v in rng.integers(0, imgsz - size + 1, size=2))
    last = size - 1  # shape pixels span [x0, x0 + last] inclusive
    mask = np.zeros((imgsz, imgsz), np.uint8)
    if CLASS_NAMES[cls] == "circle":
        radius = last // 2
        cv2.circle(mask, (x0 + radius, y0 + radius), radius, 255, thickness=-1)
    elif CLASS_NAMES[cls] == "square":
        cv2.rectangle(mask, (x0, y0), (x0 + last, y0 + last), 255, thickness=-1)
    else:  # triangle: base along one side of the square, apex on the opposite side, in one of 4 orientations
        apex = rng.uniform(0.2, 0.8) * last
        u, v = np.array([apex, 0.0, last]), np.array([0.0, last, last])
        u, v = [(u, v), (v, u), (u, last - v), (last - v, u)][int(rng.integers(4))]
        points = np.stack([x0 + u, y0 + v], axis=1).round().astype(np.int32)
        cv2.fillPoly(mask, [points], 255)
    return mask


def _box(mask: np.ndarray) -> np.ndarray:
    """The tight pixel box [x0, y0, x1, y1) around the nonzero pixels of `mask`."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller area of two [x0, y0, x1, y1) boxes.

    Unlike IoU it also catches a small box inside a big one, where the later shape would hide the
    earlier; it is never below the IoU, so it also keeps every pair's IoU under the same bound.
    """
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _render(rng: np.random.Generator, imgsz: int) -> tuple[np.ndarray, list[str]]:
    """One image and its YOLO label lines (`cls cx cy w h`, normalised): 1-4 shapes that barely overlap."""
    image = _background(rng, imgsz)
    boxes: list[np.ndarray] = []
    lines: list[str] = []
    for _ in range(int(rng.integers(1, _MAX_SHAPES + 1))):
        cls = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, cls, imgsz)
            box = _box(mask)
            if all(_overlap(box, other) <= _MAX_OVERLAP for other in boxes):
                break
        else:
            continue  # no room for this shape: the image gets fewer
        image[mask > 0] = _contrasting_colour(rng, image[mask > 0])
        boxes.append(box)
        cx, cy = (box[0] + box[2]) / 2 / imgsz, (box[1] + box[3]) / 2 / imgsz
        w, h = (box[2] - box[0]) / imgsz, (box[3] - box[1]) / imgsz
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return image, lines


def _build(folder: Path, final: Path, counts: dict[str, int], imgsz: int, seed: int) -> None:
    """Write the whole dataset into `folder`; its data.yaml points at `final`, where it will be moved."""
    for split_id, split in enumerate(_SPLITS):
        images, labels = folder / "images" / split, folder / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for i in range(counts[split]):
            image, lines = _render(np.random.default_rng([seed, split_id, i]), imgsz)
            if not cv2.imwrite(str(images / f"{i:06d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
                raise OSError(f"could not write {images / f'{i:06d}.jpg'}")
            (labels / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    spec = {
        "path": str(final),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES)),
    }
    (folder / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (folder / _MARKER).write_text(_MARKER_TEXT)


def _unique_sibling(folder: Path, kind: str) -> Path:
    """A hidden, not yet existing path next to `folder`, unique to this call (and so to this process)."""
    return folder.with_name(f".{folder.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _install(built: Path, final: Path) -> None:
    """Rename the finished `built` folder to `final`, unless a racing process already put one there."""
    if final.exists() and not _is_complete(final):
        # Not left by this function (it only renames complete folders into place): a hand-edited or
        # older-format folder. Move it aside first, since a rename cannot replace a non-empty folder.
        stale = _unique_sibling(final, "stale")
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            pass  # a racing process moved it first
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(built, final)
    except OSError:
        if not _is_complete(final):  # not a lost race: a real error
            raise


def demo_dataset(
    root: str | Path | None = None, n_train: int = 200, n_val: int = 50, imgsz: int = 160, seed: int = 0
) -> Path:
    """Path of the data.yaml of the synthetic shapes dataset, generating it on first use.

    The dataset lives in `<cache>/demo-n{n_train}-v{n_val}-s{imgsz}-seed{seed}`, where `<cache>` is
    `root`, else $YOLOSLIM_CACHE, else ~/.cache/yoloslim; a complete one there is reused as is.
    """
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got n_train={n_train}, n_val={n_val}")
    if imgsz < 32:
        raise ValueError(f"imgsz must be >= 32, got {imgsz}")
    cache = _cache_root(root)
    final = cache / f"demo-n{n_train}-v{n_val}-s{imgsz}-seed{seed}"
    if not _is_complete(final):
        try:
            cache.mkdir(parents=True, exist_ok=True)
            building = _unique_sibling(final, "tmp")
            building.mkdir()
        except OSError as e:
            raise OSError(
                e.errno,
                f"the demo dataset cannot be written in {cache} ({e.strerror}): set YOLOSLIM_CACHE to a "
                "writable folder",
            ) from None
        try:
            _build(building, final, {"train": n_train, "val": n_val}, imgsz, seed)
            _install(building, final)
        finally:
            shutil.rmtree(building, ignore_errors=True)  # already gone unless the build failed or lost a race
    return final / "data.yaml"


_DEMO_FOLDER = re.compile(r"demo-n(\d+)-v(\d+)-s(\d+)-seed(\d+)")


def recorded_data(data: str | Path | None, weights: str | Path) -> str:
    """The dataset a checkpoint records (`train_args.data`) when it is here, else a clear error that names it.

    A built-in demo set that was deleted from its cache is generated again, byte for byte, from the parameters
    its folder name records.
    """
    if not data:
        raise ValueError(f"{weights} records no dataset: pass --data your.yaml (or --data demo)")
    path = Path(data)
    if path.is_file():
        return str(path)
    if path.name == "data.yaml" and (match := _DEMO_FOLDER.fullmatch(path.parent.name)):
        n_train, n_val, imgsz, seed = map(int, match.groups())
        return str(demo_dataset(path.parent.parent, n_train, n_val, imgsz, seed))
    raise FileNotFoundError(
        f"{weights} was trained on '{data}', which is not here (moved, or run from another folder): "
        "pass --data your.yaml"
    )


def class_count(data: str | Path) -> int:
    """The number of classes a dataset yaml declares, by Ultralytics' rules (`check_det_dataset`): `names` (a list or
    a dict), or `nc` alone; both must agree. Read without checking images, so it never downloads.

    Raises:
        ValueError: neither is given, or they disagree.
    """
    spec = yaml.safe_load(Path(data).read_text()) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"dataset yaml '{data}' is not a mapping of keys (path, train, val, names): fix the file")
    names, nc = spec.get("names"), spec.get("nc")
    if names is None and nc is None:
        raise ValueError(f"dataset yaml '{data}' gives neither 'names' nor 'nc': add the class names")
    if names is not None and nc is not None and len(names) != int(nc):
        raise ValueError(f"dataset yaml '{data}' has nc: {nc} but {len(names)} names: make them agree")
    return len(names) if names is not None else int(nc)


def check_classes(data: str | Path, model: Any, source: str | Path, why: str) -> None:
    """Refuse a dataset whose class count (`class_count`) is not the one `model`'s head predicts, saying `why` the
    step needs the model's own dataset."""
    if (nc := class_count(data)) != (model_nc := int(model.model[-1].nc)):
        raise ValueError(f"dataset '{data}' has {nc} classes but '{source}' predicts {model_nc}: {why}")


def resolve_data(data: str | Path | None) -> str:
    """The dataset yaml a `--data` argument names: None, "" or "demo" mean the built-in synthetic set."""
    if data is None or str(data) in ("", "demo"):
        return str(demo_dataset())
    if not Path(data).is_file():
        raise FileNotFoundError(
            f"dataset yaml '{data}' not found: pass --data path/to/data.yaml,"
            " or --data demo for the built-in synthetic set"
        )
    return str(data)


def train_split_as_validated(args: IterableSimpleNamespace, batch: int = 1, stride: int = 32) -> YOLODataset:
    """The training images of `args.data` in file order as validation sees them (letterboxed to `args.imgsz`, no
    augmentation), with `args.task`'s labels: what Taylor scoring and INT8 calibration read, so both see the inputs
    the deployed network gets."""
    spec = check_det_dataset(args.data)
    return build_yolo_dataset(args, spec["train"], batch, spec, mode="val", stride=stride)
