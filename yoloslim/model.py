"""`yoloslim.YOLO`: Ultralytics' YOLO whose detect, segment, pose and OBB training use yoloslim's trainers.

So user code reads like the reference's: `YOLO("yolov8n.yaml").train(data=..., sr=1e-2)` for sparsity
training and `YOLO("pruned.pt").train(data=..., finetune=True)` for fine-tuning a pruned model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics import YOLO as _UltralyticsYOLO

from yoloslim.checkpoint import pruned_info, student
from yoloslim.data import resolve_data
from yoloslim.importance import gamma_importance
from yoloslim.settings import SparsityTarget
from yoloslim.target import check_target
from yoloslim.task_data import check_data_fits_task
from yoloslim.trainer import (
    SLIM_ARGS,
    TRAINERS,
    check_slim_args,
    refuse_sparsity_on_pruned,
)


class YOLO(_UltralyticsYOLO):
    """An Ultralytics YOLO model that trains with yoloslim's trainers (`SlimMixin` on each task's own).

    Everything else (predict, val, export) is Ultralytics' own. `train` takes Ultralytics' arguments and yoloslim's:
    `sr`, `sparsity` or `target_gflops`, `importance`, `streams`, `round_to`, `finetune`, `lr_scale`.

    Raises:
        ValueError: a bad slimming argument, slimming of an unsupported task, a pruned model given another task's
            dataset, an unreachable target; all before Ultralytics creates a run folder.

    Example:
        >>> model = YOLO("yolov8n.yaml")
        >>> model.train(data="data.yaml", epochs=100, sr=1e-2, target_gflops=0.4)
        >>> YOLO("pruned.pt").train(data="data.yaml", epochs=50, finetune=True)
    """

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """Ultralytics' task map with each supported task's trainer replaced by its slimming subclass."""
        tasks = super().task_map
        for task, trainer in TRAINERS.items():
            tasks[task] = {**tasks[task], "trainer": trainer}
        return tasks

    def _load(self, weights: str, task: str | None = None) -> None:
        """Ultralytics' loading; a checkpoint saved during a distillation run gives its student (the wrapper has no
        layers of its own, and its teacher was stripped), so it predicts, validates, prunes and fine-tunes."""
        super()._load(weights, task)
        self.model = student(self.model)

    def train(self, trainer=None, **kwargs: Any):
        """Ultralytics' `train`, after the slimming arguments are checked against this model.

        Bad `sr` / `sparsity` / `target_gflops` / `finetune` values, slimming of an unsupported task, a pruned model
        given another task's dataset, a model the channel graph does not cover and an unreachable sparsity target
        all fail here, before Ultralytics creates a run folder.
        """
        if any(kwargs.get(k) for k in SLIM_ARGS) and self.task not in TRAINERS:
            raise ValueError(f"sr / sparsity / finetune apply to tasks {sorted(TRAINERS)}, not task '{self.task}'")
        data = kwargs.get("data")
        if data and pruned_info(self.model) is not None and (str(data) == "demo" or Path(data).is_file()):
            # a pruned model trains on its own task's data (a dataset name Ultralytics resolves itself is not read)
            check_data_fits_task(resolve_data(data), self.task, getattr(self.model.model[-1], "kpt_shape", None))
        checked = dict(kwargs)
        ranking, target = check_slim_args(checked)
        refuse_sparsity_on_pruned(self.model, target)
        if checked["sr"] > 0 or target:  # the floors and the graph, not the ranking: gamma needs no data
            check_target(self.model, target or SparsityTarget("channels", 0.0), ranking, gamma_importance)
        return super().train(trainer=trainer, **kwargs)
