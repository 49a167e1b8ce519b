"""Shared fixtures: a tiny generated dataset and tiny trained checkpoints, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import yoloslim  # noqa: F401  (offline settings before ultralytics is imported)
from yoloslim.data import demo_dataset
from yoloslim.model import YOLO

TINY = {"imgsz": 64, "batch": 8, "workers": 0, "plots": False, "verbose": False, "exist_ok": True, "seed": 0}


def build_model(cfg: str = "yolov8n.yaml", nc: int = 3) -> torch.nn.Module:
    """A DetectionModel from yaml with random, distinct BN statistics (so channel mistakes show in outputs)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=nc, verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


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
