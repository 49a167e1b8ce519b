"""`yoloslim.YOLO`: Ultralytics' YOLO whose detection training uses `SlimTrainer`.

So user code reads like the reference's: `YOLO("yolov8n.yaml").train(data=..., sr=1e-2)` for sparsity
training and `YOLO("pruned.pt").train(data=..., finetune=True)` for fine-tuning a pruned model.
"""

from __future__ import annotations

from typing import Any

from ultralytics import YOLO as _UltralyticsYOLO

from yoloslim.trainer import SlimTrainer


class YOLO(_UltralyticsYOLO):
    """An Ultralytics YOLO model that trains detection with yoloslim's `SlimTrainer`."""

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """Ultralytics' task map with the detection trainer replaced by `SlimTrainer`."""
        tasks = super().task_map
        tasks["detect"] = {**tasks["detect"], "trainer": SlimTrainer}
        return tasks

    def train(self, trainer=None, **kwargs: Any):
        """Ultralytics' `train`; `sr` and `finetune` are refused outside detection, where nothing would apply them."""
        if (kwargs.get("sr") or kwargs.get("finetune")) and self.task != "detect":
            raise ValueError(f"sr / finetune apply to YOLOv8 detection models only, not task '{self.task}'")
        return super().train(trainer=trainer, **kwargs)
