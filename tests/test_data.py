"""The synthetic demo dataset: layout, label validity, determinism, caching, atomic generation; the class count a
dataset yaml declares."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from yoloslim import data
from yoloslim.artifacts import calibration_data
from yoloslim.data import CLASS_NAMES, class_count, demo_dataset, resolve_data

from .conftest import build_model

SMALL = {"n_train": 6, "n_val": 3, "imgsz": 64}


def _labels(folder: Path) -> dict[str, list[list[float]]]:
    """Every label file under `folder`/labels, relative path -> rows of floats."""
    return {
        str(f.relative_to(folder)): [[float(v) for v in line.split()] for line in f.read_text().splitlines()]
        for f in sorted((folder / "labels").rglob("*.txt"))
    }


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _iou(a: list[float], b: list[float]) -> float:
    """IoU of two normalised (cx, cy, w, h) boxes."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (
        (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy, w, h in (a, b)
    )
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_layout_and_yaml(tmp_path):
    path = demo_dataset(tmp_path, **SMALL, seed=3)
    folder = tmp_path / "demo-n6-v3-s64-seed3"
    assert path == folder / "data.yaml"
    assert (folder / ".complete").is_file()
    spec = yaml.safe_load(path.read_text())
    assert spec == {
        "path": str(folder.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": {0: "circle", 1: "square", 2: "triangle"},
    }
    assert Path(spec["path"]).is_absolute()
    for split, n in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (folder / "images" / split).iterdir()) == [f"{i:06d}.jpg" for i in range(n)]
        assert sorted(p.name for p in (folder / "labels" / split).iterdir()) == [f"{i:06d}.txt" for i in range(n)]
    assert not [p for p in tmp_path.iterdir() if p != folder]  # no temporary folders left behind


def test_images_and_labels_are_valid(tmp_path):
    folder = demo_dataset(tmp_path, n_train=30, n_val=3, imgsz=64).parent
    classes = set()
    for image_file in sorted((folder / "images").rglob("*.jpg")):
        image = cv2.imread(str(image_file))
        assert image is not None and image.shape == (64, 64, 3) and image.dtype == np.uint8
        label_file = folder / "labels" / image_file.parent.name / f"{image_file.stem}.txt"
        lines = label_file.read_text().splitlines()
        assert 1 <= len(lines) <= 4
        boxes = []
        for line in lines:
            fields = line.split()
            assert len(fields) == 5 and all(len(v.split(".")[1]) == 6 for v in fields[1:])  # 6 decimals
            cls, (cx, cy, w, h) = int(fields[0]), map(float, fields[1:])
            assert 0 <= cls < len(CLASS_NAMES)
            assert w == h and 0.12 * 64 - 1.5 <= w * 64 <= 0.45 * 64 + 0.5  # 12%-45% of the side, to a pixel
            assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6  # box inside the image
            assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
            classes.add(cls)
            boxes.append([cx, cy, w, h])
        assert all(_iou(a, b) <= 0.3 + 1e-4 for a, b in itertools.combinations(boxes, 2))
    assert classes == {0, 1, 2}


def test_boxes_are_tight_around_the_drawn_shape():
    """Before JPEG compression, the last shape's pixels (never covered by a later one) span exactly its box."""
    size = 96
    for i in range(20):
        image, lines = data._render(np.random.default_rng([0, 0, i]), size)
        cx, cy, w, h = (float(v) * size for v in lines[-1].split()[1:])
        x0, y0, x1, y1 = (round(v) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        box = image[y0:y1, x0:x1].reshape(-1, 3)
        colours, counts = np.unique(box, axis=0, return_counts=True)
        colour = colours[counts.argmax()]  # the textured background has no large single-colour area
        # look one pixel beyond the box on each side: the shape colour must fill out to the edges, not past them
        around = image[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
        ys, xs = np.nonzero((around == colour).all(axis=2))
        oy, ox = max(y0 - 1, 0), max(x0 - 1, 0)
        assert (ys.min() + oy, xs.min() + ox, ys.max() + oy + 1, xs.max() + ox + 1) == (y0, x0, y1, x1)


def test_deterministic_across_roots(tmp_path):
    a = demo_dataset(tmp_path / "a", **SMALL).parent
    b = demo_dataset(tmp_path / "b", **SMALL).parent
    assert _labels(a) == _labels(b)
    for fa in sorted((a / "labels").rglob("*.txt")):
        assert fa.read_bytes() == (b / fa.relative_to(a)).read_bytes()
    for fa in sorted((a / "images").rglob("*.jpg")):
        assert np.array_equal(cv2.imread(str(fa)), cv2.imread(str(b / fa.relative_to(a))))
    c = demo_dataset(tmp_path / "c", **SMALL, seed=1).parent
    assert _labels(c) != _labels(a)


def test_second_call_reuses(tmp_path, monkeypatch):
    path = demo_dataset(tmp_path, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in _files(path.parent)}

    def fail(*args, **kwargs):
        raise AssertionError("a complete dataset was regenerated")

    monkeypatch.setattr(data, "_build", fail)
    assert demo_dataset(tmp_path, **SMALL) == path
    assert (path.parent / ".complete").is_file()
    assert {p: p.stat().st_mtime_ns for p in _files(path.parent)} == before


def test_incomplete_folder_is_regenerated(tmp_path):
    reference = demo_dataset(tmp_path / "ref", **SMALL).parent
    folder = tmp_path / "cache" / reference.name
    (folder / "images" / "train").mkdir(parents=True)
    (folder / "images" / "train" / "000000.jpg").write_bytes(b"half written")
    (folder / "junk.txt").write_text("left over")
    path = demo_dataset(tmp_path / "cache", **SMALL)
    assert path.parent == folder and (folder / ".complete").is_file() and not (folder / "junk.txt").exists()
    assert _labels(folder) == _labels(reference)
    assert cv2.imread(str(folder / "images" / "train" / "000000.jpg")) is not None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # stale copy deleted


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real_build = data._build

    def interrupted(folder, final, counts, imgsz, seed):
        real_build(folder, final, {"train": 1, "val": 1}, imgsz, seed)
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_build", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(data, "_build", real_build)
    assert (demo_dataset(tmp_path, **SMALL).parent / ".complete").is_file()


def test_losing_the_race_uses_the_winner(tmp_path, monkeypatch):
    """A process whose rename finds a complete dataset already in place keeps that one and cleans up."""
    real_build = data._build
    calls = []

    def racing(folder, final, counts, imgsz, seed):
        calls.append(folder)
        if len(calls) == 1:  # another process finishes while this one is still building
            demo_dataset(tmp_path, **SMALL)
        real_build(folder, final, counts, imgsz, seed)

    monkeypatch.setattr(data, "_build", racing)
    path = demo_dataset(tmp_path, **SMALL)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert (path.parent / ".complete").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [path.parent.name]


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOSLIM_CACHE", str(tmp_path / "env"))
    assert demo_dataset(**SMALL) == tmp_path / "env" / "demo-n6-v3-s64-seed0" / "data.yaml"
    monkeypatch.delenv("YOLOSLIM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".cache" / "yoloslim" / "demo-n6-v3-s64-seed0" / "data.yaml"
    assert demo_dataset(**SMALL) == expected and expected.is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_val": -1}, "n_val"),
        ({"imgsz": 31}, "imgsz"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        demo_dataset(tmp_path, **{**SMALL, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_resolve_data(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOSLIM_CACHE", str(tmp_path / "cache"))
    default = tmp_path / "cache" / "demo-n200-v50-s160-seed0" / "data.yaml"
    for arg in (None, "", "demo"):
        assert resolve_data(arg) == str(default)
    assert default.is_file()
    own = tmp_path / "mine.yaml"
    own.write_text("train: a\nval: b\nnames: {0: x}\n")
    assert resolve_data(own) == str(own) and resolve_data(str(own)) == str(own)
    with pytest.raises(FileNotFoundError, match=r"'nope\.yaml' not found: pass --data .*--data demo") as err:
        resolve_data("nope.yaml")
    assert "\n" not in str(err.value)


def test_ultralytics_reads_it(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from ultralytics.data.utils import check_det_dataset

    path = demo_dataset(tmp_path, **SMALL)
    info = check_det_dataset(str(path))
    assert info["nc"] == 3 and info["names"] == dict(enumerate(CLASS_NAMES))
    for split in ("train", "val"):
        assert Path(info[split]).is_dir() and Path(info[split]) == path.parent / "images" / split


@pytest.mark.parametrize(
    "spec, count",
    [("names: [a, b]", 2), ("names: {0: a, 1: b, 2: c}", 3), ("nc: 2", 2), ("nc: 3\nnames: [a, b, c]", 3)],
)
def test_class_count_follows_ultralytics_rules(spec, count, tmp_path) -> None:
    """`nc` alone is a valid dataset yaml (Ultralytics names the classes class_0...): the INT8 export's class check
    read only `names` and called such a set '0 classes'."""
    path = tmp_path / "data.yaml"
    path.write_text(f"path: .\ntrain: images\nval: images\n{spec}\n")
    assert class_count(path) == count
    assert calibration_data(str(path), build_model(nc=count), Path("m.pt")) == str(path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("train: images", "gives neither 'names' nor 'nc'"),
        ("nc: 2\nnames: [a, b, c]", "has nc: 2 but 3 names"),
        ("- a\n- b", "is not a mapping"),
    ],
)
def test_class_count_refuses_what_ultralytics_refuses(spec, message, tmp_path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(spec + "\n")
    with pytest.raises(ValueError, match=message):
        class_count(path)
