"""INT8 ONNX: onnxruntime static quantization of the FP32 file Ultralytics exports, with 7-bit weights.

Ultralytics' own ONNX INT8 export quantizes weights and activations to 8 bits. onnxruntime runs such a model on x86
CPUs without VNNI (AVX2 only) with `vpmaddubsw`, whose 16-bit sum of two u8 x s8 products saturates, and the
outputs come out wrong: on one such CPU the pruned test model's box sizes were 26% short (15.5 px median error at
64 px), where 7-bit weights (`reduce_range`, the fix onnxruntime's quantization guide names for this) gave 0.08 px.
An artifact is made once and run on whatever CPU a user has, so every INT8 ONNX file gets 7-bit weights.

Everything else is as Ultralytics quantizes: only the convs and matmuls (the head's box decode stays float: one
8-bit scale over box pixels and class scores would round every score to 0), min-max calibrated on training
images letterboxed to the export size, as validation sees them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, quantize_static
from ultralytics.cfg import get_cfg

from yoloslim.data import train_split_as_validated

CALIBRATION_IMAGES = 300  # Ultralytics warns below 300 calibration images; more only cost time on large sets
QUANTIZED_OPS = {"Conv", "Gemm", "MatMul"}


def calibration_images(data: str, imgsz: int, task: str, limit: int = CALIBRATION_IMAGES) -> Iterator[np.ndarray]:
    """Up to `limit` training images of `data` (labels read as `task` reads them), evenly spaced in file order,
    letterboxed to `imgsz` square, as batch-1 float inputs in [0, 1]."""
    dataset = train_split_as_validated(get_cfg(overrides={"task": task, "imgsz": imgsz, "data": data}))
    for i in np.unique(np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round().astype(int)):
        yield dataset[int(i)]["img"][None].numpy().astype(np.float32) / 255


class _Reader(CalibrationDataReader):
    """onnxruntime's calibration feed: one image at a time under the model's input name."""

    def __init__(self, images: Iterator[np.ndarray], name: str) -> None:
        self.images, self.name = images, name

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {self.name: image}


def quantize_onnx(fp32: Path, int8: Path, data: str, imgsz: int, task: str) -> Path:
    """Write `int8`, the INT8 version of the ONNX file `fp32` of a `task` model, calibrated on `data`'s training
    images."""
    graph = onnx.load(str(fp32)).graph
    exclude = [node.name for node in graph.node if node.op_type not in QUANTIZED_OPS]
    quantize_static(
        str(fp32),
        str(int8),
        _Reader(calibration_images(data, imgsz, task), graph.input[0].name),
        nodes_to_exclude=exclude,
        reduce_range=True,
    )
    return int8
