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
