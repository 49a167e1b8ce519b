"""Image size and batch size: checked where they enter (CLI, scripts, pipeline, steps), and the image size
rounded to the model's stride the way Ultralytics rounds it, so that every figure names the size really used.

Ultralytics quietly trains, validates and exports at the next multiple of the model's largest stride
(`ultralytics.utils.checks.check_imgsz`: 100 becomes 128), and turns 0 or a negative size into one stride.
A validation that reports GFLOPs at 100 while it ran at 128, or an export checked at another size than the
file was made at, follows from that; here the rounding happens once, with a warning that says so.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from torch import nn
from ultralytics.utils import LOGGER


def check_whole(name: str, value: Any) -> int:
    """A count that must be a whole number > 0 (epochs; imgsz, in pixels)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        example = {"imgsz": "640 (pixels)", "epochs": "30"}.get(name, "1")
        raise ValueError(f"{name}={value!r} must be a whole number > 0, e.g. {example}")
    return int(value)


def check_imgsz(imgsz: Any) -> int:
    """An image size: a whole number of pixels > 0."""
    return check_whole("imgsz", imgsz)


def check_batch(batch: Any, autobatch: bool = True) -> int:
    """A batch size: a whole number > 0, or -1 (Ultralytics' AutoBatch, on CUDA) where `autobatch` allows it."""
    whole = not isinstance(batch, bool) and isinstance(batch, numbers.Integral)
    if not whole or not (batch > 0 or (autobatch and batch == -1)):
        also = " (or -1: Ultralytics' AutoBatch on a GPU)" if autobatch else ""
        raise ValueError(f"batch={batch!r} must be a whole number > 0{also}, e.g. 16")
    return int(batch)


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
