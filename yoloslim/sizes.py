"""Image size and batch size: checked where they enter (CLI, scripts, pipeline, steps), and the image size
rounded to the model's stride the way Ultralytics rounds it, so that every figure names the size really used.

Ultralytics quietly trains, validates and exports at the next multiple of the model's largest stride
(`ultralytics.utils.checks.check_imgsz`: 100 becomes 128), and turns 0 or a negative size into one stride.
A validation that reports GFLOPs at 100 while it ran at 128, or an export checked at another size than the
file was made at, follows from that; here the rounding happens once, with a warning that says so.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from ultralytics.utils import LOGGER

from yoloslim.settings import check_imgsz


def model_stride(model: nn.Module) -> int:
    """The largest stride of a detection-family model (32 for every YOLOv8/11/12/26 scale)."""
    return int(max(model.stride.tolist()))


def fit_imgsz(imgsz: Any, model: nn.Module) -> int:
    """`imgsz` checked and rounded up to a multiple of the model's largest stride, with a warning when it moves."""
    imgsz = check_imgsz(imgsz)
    stride = model_stride(model)
    fitted = math.ceil(imgsz / stride) * stride
    if fitted != imgsz:
        LOGGER.warning(f"yoloslim: imgsz {imgsz} is not a multiple of the model's stride {stride}: using {fitted}")
    return fitted
