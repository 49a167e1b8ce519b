"""Shared fixtures: a tiny generated dataset and tiny trained checkpoints, built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import yoloslim  # noqa: F401  (offline settings before ultralytics is imported)
from yoloslim.data import demo_dataset
from yoloslim.model import YOLO
from yoloslim.settings import Ranking

TINY = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "verbose": False, "exist_ok": True, "seed": 0}
GAMMA = Ranking(importance="gamma")  # a ranking that needs no data (the table's default, Taylor, reads images)
STREAMS = Ranking(importance="gamma", streams=True)


def build_model(cfg: str | dict = "yolov8n.yaml", nc: int = 3, model_class: type | None = None) -> torch.nn.Module:
    """A model from yaml (a DetectionModel unless `model_class` says otherwise) with random, distinct BN statistics
    (so channel mistakes show in outputs)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = (model_class or DetectionModel)(cfg, nc=nc, verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


STOCK_PREDICT = """
import sys, numpy as np
from ultralytics import YOLO
model = YOLO(sys.argv[1])
results = model.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
print("PARAMS", sum(p.numel() for p in model.model.parameters()), "RESULTS", len(results), "TASK", model.task)
print("YOLOSLIM_IMPORTED", "yoloslim" in sys.modules)
"""


def stock_predict(weights: Path) -> str:
    """The stdout of stock Ultralytics (offline, in a process without yoloslim) loading `weights` and predicting
    one image: its parameter count, result count and task."""
    out = subprocess.run(
        [sys.executable, "-c", STOCK_PREDICT, str(weights)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )
    assert "YOLOSLIM_IMPORTED False" in out.stdout, out.stderr[-2000:]
    return out.stdout


def yoloslim_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m yoloslim ARGV` in a child process (with `env` added), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "yoloslim", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(out: subprocess.CompletedProcess, message: str) -> None:
    """The command failed with `message` on its last line, `yoloslim <step>: ...`, and no traceback."""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert message in lines[-1] and lines[-1].startswith("yoloslim "), lines[-1]


class Interrupt(Exception):
    """Stands in for a run killed after its first checkpoint."""


def train_interrupted(model: YOLO, **train_args) -> None:
    """Train `model` and stop it right after the first epoch's checkpoint is written."""

    def interrupt(trainer) -> None:
        raise Interrupt

    model.add_callback("on_model_save", interrupt)
    with pytest.raises(Interrupt):
        model.train(**train_args)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A 16-train / 8-val image synthetic dataset at 64 px."""
    return str(demo_dataset(root=tmp_path_factory.mktemp("data"), n_train=16, n_val=8, imgsz=64))


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """Folder for training runs."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_data, runs) -> Path:
    """A yolov8n checkpoint trained for one epoch on the tiny dataset."""
    model = YOLO("yolov8n.yaml")
    model.train(data=tiny_data, epochs=1, project=str(runs), name="tiny", **TINY)
    return Path(model.trainer.best)


def _relabelled(tiny_data: str, root: Path, line_of, **spec) -> str:
    """A copy of the tiny dataset whose label lines are `line_of(cls, x0, y0, x1, y1, box)` (normalised corners and
    the original `cx cy w h`), with `spec` added to its yaml."""
    source = Path(tiny_data).parent
    shutil.copytree(source / "images", root / "images")
    for label in (source / "labels").rglob("*.txt"):
        lines = []
        for line in label.read_text().split("\n"):
            if line.strip():
                c, x, y, w, h = line.split()
                x0, y0, x1, y1 = (
                    float(x) - float(w) / 2,
                    float(y) - float(h) / 2,
                    float(x) + float(w) / 2,
                    float(y) + float(h) / 2,
                )
                lines.append(line_of(c, x0, y0, x1, y1, f"{x} {y} {w} {h}"))
        out = root / label.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
    base = yaml.safe_load(Path(tiny_data).read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**base, **spec, "path": str(root)}))
    return str(root / "data.yaml")


@pytest.fixture(scope="session")
def corner_data(tiny_data, tmp_path_factory) -> str:
    """The tiny dataset with each box written as its 4 corners (`cls x1 y1 ... x4 y4`): valid polygon labels for
    segmentation and valid oriented boxes for OBB."""

    def corners(c, x0, y0, x1, y1, box):
        return f"{c} {x0:.6f} {y0:.6f} {x1:.6f} {y0:.6f} {x1:.6f} {y1:.6f} {x0:.6f} {y1:.6f}"

    return _relabelled(tiny_data, tmp_path_factory.mktemp("corners"), corners)


@pytest.fixture(scope="session")
def pose_data(tiny_data, tmp_path_factory) -> str:
    """The tiny dataset as a pose set: each box with its 4 corners as keypoints (x, y), `kpt_shape` [4, 2]."""

    def keypoints(c, x0, y0, x1, y1, box):
        return f"{c} {box} {x0:.6f} {y0:.6f} {x1:.6f} {y0:.6f} {x1:.6f} {y1:.6f} {x0:.6f} {y1:.6f}"

    return _relabelled(tiny_data, tmp_path_factory.mktemp("pose"), keypoints, kpt_shape=[4, 2], flip_idx=[1, 0, 3, 2])
