"""Deployable artifacts: what Ultralytics' exporter makes of a checkpoint, run in each format's own runtime.

Formats: ONNX (onnxruntime), OpenVINO (its runtime; `pip install -e ".[openvino]"`) and TorchScript, in FP32, or
INT8 for ONNX (onnxruntime static quantization with 7-bit weights, yoloslim/quantize.py) and OpenVINO (NNCF, by
Ultralytics), calibrated on the dataset's training images. Every artifact is run the same way: a `Runner` takes one
batch-1 float image and returns the model's outputs as arrays. An FP artifact is checked against the torch model's outputs; an INT8 one is validated
on the dataset instead, since its outputs differ by design.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from yoloslim.channels import input_channels
from yoloslim.settings import FORMATS, INT8_FORMATS

Runner = Callable[[np.ndarray], list[np.ndarray]]
Timer = Callable[[], float]

EXTRA = {"openvino": "openvino", "nncf": "openvino"}  # the runtime's module -> the pip extra that installs it


@dataclass(frozen=True)
class Kind:
    """A deployable kind: a format and its precision (32 or 8 bits)."""

    format: str
    bits: int = 32

    @classmethod
    def parse(cls, text: str) -> Kind:
        """`onnx`, `onnx-int8`, `openvino`, `openvino-int8` or `torchscript`."""
        fmt, _, precision = text.partition("-")
        if precision not in ("", "int8"):
            raise ValueError(f"'{text}': the precision is int8 or none (FP32), e.g. onnx-int8")
        kind = cls(fmt, 8 if precision else 32)
        kind.check()
        return kind

    @property
    def name(self) -> str:
        """The kind as the CLI spells it: the format, with `-int8` for an INT8 kind (`onnx`, `openvino-int8`)."""
        return self.format if self.bits == 32 else f"{self.format}-int{self.bits}"

    def check(self) -> None:
        """A format Ultralytics exports and this module runs, at a precision it has, with its runtime installed."""
        if self.format not in FORMATS:
            raise ValueError(f"format '{self.format}' is not one of {list(FORMATS)}")
        if self.bits == 8 and self.format not in INT8_FORMATS:
            raise ValueError(f"INT8 is exported for {list(INT8_FORMATS)}, not {self.format}")
        needed = ["openvino"] if self.format == "openvino" else []
        needed += ["nncf"] if self.format == "openvino" and self.bits == 8 else []
        for module in needed:
            if importlib.util.find_spec(module) is None:
                extra = EXTRA[module]
                raise ValueError(
                    f"{self.name} needs the '{module}' package, which is not installed: pip install -e \".[{extra}]\""
                )

    def artifact(self, checkpoint: Path) -> Path:
        """Where Ultralytics' exporter writes this kind of `checkpoint` (a file, or an OpenVINO folder)."""
        stem = checkpoint.stem + ("_int8" if self.bits == 8 else "")
        if self.format == "openvino":
            return checkpoint.with_name(f"{stem}_openvino_model")
        return checkpoint.with_name(stem + {"onnx": ".onnx", "torchscript": ".torchscript"}[self.format])

    def check_destination(self, checkpoint: Path) -> None:
        """Refuse `artifact(checkpoint)` when something of the other type is there (a folder where the file goes, a
        file where the OpenVINO folder goes): the checked artifact could not be moved into place after the export.

        Raises:
            ValueError: the path is taken by the other type, with what to do.
        """
        final = self.artifact(checkpoint)
        folder = self.format == "openvino"
        if final.exists() and final.is_dir() != folder:
            there, wanted = ("a folder", "file") if final.is_dir() else ("a file", "folder")
            raise ValueError(
                f"{final} is {there}, where the {self.name} {wanted} goes: move it away, or choose another folder"
            )


def onnx_session(path: str | Path) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session for `path` (onnxruntime picks its thread count: every core)."""
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_runners(paths: list[Path]) -> dict[Path, Runner]:
    """A runner for each ONNX file."""
    return {p: runner(p, Kind("onnx")) for p in paths}


def runner(path: str | Path, kind: Kind) -> Runner:
    """A function that runs the artifact at `path` on one image batch (CPU) and returns its outputs."""
    path = Path(path)
    if kind.format == "onnx":
        sess = onnx_session(path)
        name = sess.get_inputs()[0].name
        return _with_channels(lambda x: sess.run(None, {name: x}), sess.get_inputs()[0].shape[1])
    if kind.format == "openvino":
        import openvino

        # an FP32 model runs in FP32: OpenVINO would pick bf16 on CPUs that have it (docs/DESIGN.md, "Deploy")
        config = {"INFERENCE_PRECISION_HINT": "f32"} if kind.bits == 32 else {}
        compiled = openvino.Core().compile_model(str(next(path.glob("*.xml"))), "CPU", config)
        channels = compiled.inputs[0].get_partial_shape()[1].get_length()
        return _with_channels(lambda x: [np.asarray(v) for v in compiled(x).values()], channels)
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        return [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]

    return _with_channels(run, _torchscript_channels(module))


def _with_channels(run: Runner, channels: int) -> Runner:
    """`run`, with the number of image channels its input takes (`run.channels`), for latency inputs."""
    run.channels = int(channels)
    return run


def _torchscript_channels(module: torch.jit.ScriptModule) -> int:
    """The image channels of a TorchScript model: its first conv's input channels."""
    weight = next(p for p in module.parameters() if p.dim() == 4)
    return int(weight.shape[1])


def output_difference(run: Runner, model: nn.Module, imgsz: int, seed: int = 0) -> float:
    """Largest absolute difference between an artifact's outputs and the torch model's on one random image
    (detections, and a segmentation model's mask prototypes too); an error if their shapes differ."""
    x = torch.rand(1, input_channels(model), imgsz, imgsz, generator=torch.Generator().manual_seed(seed))
    model = model.float().eval()
    with torch.no_grad():
        out = model(x)
    out = out[0] if isinstance(out, (list, tuple)) else out  # eval returns (outputs, raw head outputs)
    expected = [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
    got = run(x.numpy())
    if [g.shape for g in got] != [e.shape for e in expected]:
        raise ValueError(
            f"exported output shapes {[g.shape for g in got]} differ from the torch model's {[e.shape for e in expected]}"
        )
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


def latency_ms(run: Runner, imgsz: int, warmup: int = 5, repeats: int = 30, timer: Timer = time.perf_counter) -> float:
    """Median latency of one image (batch 1, the runner's channels) in milliseconds, after `warmup` runs, over
    `repeats` runs."""
    x = np.random.default_rng(0).random((1, getattr(run, "channels", 3), imgsz, imgsz), dtype=np.float32)
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        t = timer()
        run(x)
        times.append((timer() - t) * 1e3)
    return statistics.median(times)


def side_by_side_latency_ms(
    runs: dict[Hashable, Runner], imgsz: int, rounds: int = 3, repeats: int = 30, timer: Timer = time.perf_counter
) -> dict[Hashable, float]:
    """Median latency of each runner, measured in interleaved rounds so that machine drift hits all alike."""
    measured: dict[Hashable, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            measured[name].append(latency_ms(run, imgsz, repeats=max(repeats // rounds, 1), timer=timer))
    return {name: statistics.median(times) for name, times in measured.items()}
