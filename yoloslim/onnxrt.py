"""onnxruntime checks of an exported model: agreement with the torch model, and CPU latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from yoloslim.channels import input_channels


def session(path: str | Path) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session for `path` (onnxruntime picks its thread count: every core)."""
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_output_difference(path: str | Path, model: nn.Module, imgsz: int, seed: int = 0) -> float:
    """Largest absolute difference between the ONNX file's outputs and the torch model's on one input (detections,
    and a segmentation model's mask prototypes too)."""
    x = torch.rand(1, input_channels(model), imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    model = model.float().eval()
    with torch.no_grad():
        out = model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out  # eval returns (outputs, raw head outputs)
    expected = [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
    sess = session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ValueError(
            f"ONNX output shapes {[g.shape for g in got]} differ from the torch model's {[e.shape for e in expected]}"
        )
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


def latency_ms(path: str | Path, imgsz: int, warmup: int = 5, repeats: int = 30) -> float:
    """Median onnxruntime CPU latency of one image (batch 1), after `warmup` runs, over `repeats` runs."""
    sess = session(path)
    name, channels = sess.get_inputs()[0].name, sess.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).random((1, channels, imgsz, imgsz), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def side_by_side_latency_ms(paths: list[Path], imgsz: int, rounds: int = 3, repeats: int = 30) -> dict[Path, float]:
    """Median latency of each ONNX file, measured in interleaved rounds so machine drift hits all alike."""
    measured: dict[Path, list[float]] = {p: [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            measured[p].append(latency_ms(p, imgsz, repeats=max(repeats // rounds, 1)))
    return {p: statistics.median(times) for p, times in measured.items()}
