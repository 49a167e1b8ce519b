"""`yoloslim.YOLO`: Ultralytics' YOLO whose detection training uses `SlimTrainer`.

So user code reads like the reference's: `YOLO("yolov8n.yaml").train(data=..., sr=1e-2)` for sparsity
training and `YOLO("pruned.pt").train(data=..., finetune=True)` for fine-tuning a pruned model.
"""

from __future__ import annotations

from typing import Any

from ultralytics import YOLO as _UltralyticsYOLO

from yoloslim.target import check_target
from yoloslim.trainer import (
    SLIM_ARGS,
    SlimTrainer,
    check_slim_args,
    ranking_args,
    refuse_sparsity_on_pruned,
    zeroing_target,
)


class YOLO(_UltralyticsYOLO):
    """An Ultralytics YOLO model that trains detection with yoloslim's `SlimTrainer`."""

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """Ultralytics' task map with the detection trainer replaced by `SlimTrainer`."""
        tasks = super().task_map
        tasks["detect"] = {**tasks["detect"], "trainer": SlimTrainer}
        return tasks

    def train(self, trainer=None, **kwargs: Any):
        """Ultralytics' `train`, after the slimming arguments are checked against this model.

        Bad `sr` / `sparsity` / `target_gflops` / `finetune` values, slimming outside detection, a model the channel graph does
        not cover and an unreachable sparsity target all fail here, before Ultralytics creates a run folder.
        """
        if any(kwargs.get(k) for k in SLIM_ARGS) and self.task != "detect":
            raise ValueError(f"sr / sparsity / finetune apply to YOLOv8 detection models only, not task '{self.task}'")
        checked = dict(kwargs)
        check_slim_args(checked)
        target = zeroing_target(checked)
        refuse_sparsity_on_pruned(self.model, target)
        if checked["sr"] > 0 or target:
            check_target(self.model, *(target or ("channels", 0.0)), **ranking_args(checked))
        return super().train(trainer=trainer, **kwargs)
