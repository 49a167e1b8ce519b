"""INT8 ONNX: onnxruntime static quantization of the FP32 file Ultralytics exports, with 7-bit weights.

Ultralytics' own ONNX INT8 export quantizes weights and activations to 8 bits. onnxruntime runs such a model on x86
CPUs without VNNI (AVX2 only) with `vpmaddubsw`, whose 16-bit sum of two u8 x s8 products saturates, and the outputs
come out wrong; 7-bit weights (`reduce_range`, the fix onnxruntime's quantization guide names for this) come out
right (docs/DESIGN.md, "Deploy"). An artifact is made once and run on whatever CPU a user has, so every INT8 ONNX
file gets 7-bit weights.

How the rest is quantized is a `Quantization` (bench/onnx_int8.py sweeps them, with latency and mAP per variant):
the format (QDQ: Quantize/DequantizeLinear pairs that onnxruntime fuses into integer kernels when it loads the file;
QOperator: the integer ops, QLinearConv..., written in the file), int8 or uint8 activations, weight scales per tensor
or per output channel, which op types are quantized (the convs and matmuls only, as Ultralytics quantizes, so that
every conv's output is dequantized to float for its SiLU and quantized again for the next conv; or also the SiLU's
Sigmoid and Mul and the Add / Concat / MaxPool / Resize / Split between convs, so that activations stay 8-bit from
conv to conv), whether the head's decode stays float, and whether onnxruntime's `quant_pre_process` (shape
inference and graph optimisation) runs first.

The activation type decides what onnxruntime runs on x86. It fuses a QDQ conv into QLinearConv only for uint8
activations there (int8 ones only on ARM: `QDQIsInt8Allowed`); with int8 activations most convs stay float convs on
weights dequantized at every run, between Quantize/DequantizeLinear pairs, and the file runs slower than FP32.
QOperator files carry QLinearConv themselves (onnxruntime's guide calls int8 QOperator slow on x86).

The decode (`decode_nodes`) is the Detect head's own ops after its last convs: the DFL (softmax over the box-side
bins and a fixed 1x1 conv whose weights are the bin indices 0..15) and the box and score arithmetic up to the
outputs. One 8-bit scale over box pixels and class scores would round every score to 0, and a 7-bit DFL conv
rounds its bin indices to steps of 15/64 (up to 0.11 bin off, 3.5 px at stride 32) and its output to 8 bits, so the
decode stays float (Ultralytics PR #25306 does the same for OpenVINO).

The default (`DEFAULT`, the field defaults of `Quantization`) is what bench/onnx_int8.py measured fastest and most
accurate, docs/lab/deploy.md "onnxruntime INT8 variants": QDQ, uint8 activations, per-channel weights, the
activations between convs quantized too, the decode float, no pre-processing; min-max calibrated on training images
letterboxed to the export size, as validation sees them. `BEFORE` is what this module made before the variants.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static
from ultralytics.cfg import get_cfg

from yoloslim.data import train_split_as_validated

CALIBRATION_IMAGES = 300  # Ultralytics warns below 300 calibration images; more only cost time on large sets
CONV_OPS = frozenset({"Conv", "Gemm", "MatMul"})
# the ops between convs that onnxruntime has integer kernels for (QLinearSigmoid, QLinearMul, QLinearAdd,
# QLinearConcat; MaxPool, Resize and Split run on 8-bit data as they are)
ACTIVATION_OPS = CONV_OPS | {"Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split"}
QUANT_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
ACTIVATIONS = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
OP_SETS = {"convs": CONV_OPS, "acts": ACTIVATION_OPS}
HEAD = re.compile(r"/model\.\d+/")  # Ultralytics' exporter names each node by its module: /model.22/dfl/conv/Conv


@dataclass(frozen=True)
class Quantization:
    """One way to quantize an FP32 ONNX file (weights are always 7-bit, the module docstring says why).

    Attributes:
        format: "qdq" or "qoperator".
        activations: "s8" (int8, onnxruntime's default) or "u8" (uint8, what its x86 integer kernels take).
        per_channel: one weight scale per output channel, not one per tensor.
        ops: the op types quantized (`CONV_OPS`, `ACTIVATION_OPS`).
        float_decode: leave the head's decode (`decode_nodes`) in float.
        preprocess: run onnxruntime's `quant_pre_process` (shape inference, graph optimisation) first.
    """

    format: str = "qdq"
    activations: str = "u8"
    per_channel: bool = True
    ops: frozenset[str] = field(default=ACTIVATION_OPS)
    float_decode: bool = True
    preprocess: bool = False

    def __post_init__(self) -> None:
        if self.format not in QUANT_FORMATS:
            raise ValueError(f"quantization format '{self.format}' is not one of {list(QUANT_FORMATS)}")
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"quantized activations '{self.activations}' are not one of {list(ACTIVATIONS)}")
        object.__setattr__(self, "ops", frozenset(self.ops))

    @property
    def name(self) -> str:
        """A short name, FORMAT-ACTIVATIONS-SCALES-OPS[+qdecode][+pre]: `qdq-s8-tensor-convs`,
        `qoperator-u8-channel-acts+pre`; `+qdecode` when the decode is quantized too."""
        ops = next((k for k, v in OP_SETS.items() if v == self.ops), "+".join(sorted(self.ops)))
        name = f"{self.format}-{self.activations}-{'channel' if self.per_channel else 'tensor'}-{ops}"
        return name + ("" if self.float_decode else "+qdecode") + ("+pre" if self.preprocess else "")

    @classmethod
    def parse(cls, name: str) -> Quantization:
        """The variant a `name` names (the inverse of `.name` for the `OP_SETS`)."""
        fmt, activations, scales, rest = (name.split("-", 3) + ["", "", ""])[:4]
        ops, *flags = rest.split("+")
        if (
            fmt not in QUANT_FORMATS
            or activations not in ACTIVATIONS
            or scales not in ("tensor", "channel")
            or ops not in OP_SETS
            or set(flags) - {"qdecode", "pre"}
        ):
            raise ValueError(
                f"'{name}' is not a quantization variant: FORMAT-ACTIVATIONS-SCALES-OPS[+qdecode][+pre], FORMAT "
                f"{' or '.join(QUANT_FORMATS)}, ACTIVATIONS {' or '.join(ACTIVATIONS)}, SCALES tensor or channel, OPS "
                f"{' or '.join(OP_SETS)} (e.g. qdq-u8-channel-acts)"
            )
        return cls(fmt, activations, scales == "channel", OP_SETS[ops], "qdecode" not in flags, "pre" in flags)


DEFAULT = Quantization()
BEFORE = Quantization("qdq", "s8", False, CONV_OPS, float_decode=False)  # int8 activations, the DFL conv quantized


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
        """The next image as onnxruntime's input feed, None when the images are used up."""
        image = next(self.images, None)
        return None if image is None else {self.name: image}


def decode_nodes(graph: onnx.GraphProto) -> list[str]:
    """The names of the nodes of the head's decode: the head is the module (`/model.N/`, N differs per model) whose
    nodes make the graph's outputs; its decode is its nodes outside its conv branches (cv2, cv3, cv4, proto, ...):
    those named in the head itself (`/model.N/Concat_3`) or in its DFL (`/model.N/dfl/...`).

    Raises:
        ValueError: the graph's nodes are not named as Ultralytics' exporter names them.
    """
    producer = {out: node for node in graph.node for out in node.output}
    heads = {m.group(0) for o in graph.output if o.name in producer and (m := HEAD.match(producer[o.name].name))}
    decode = [
        node.name
        for node in graph.node
        for head in heads
        if node.name.startswith(head) and ("/" not in (rest := node.name[len(head) :]) or rest.startswith("dfl/"))
    ]
    if not decode:
        raise ValueError(
            "cannot find the detection head's decode: the ONNX node names are not Ultralytics' (/model.N/...); "
            "quantize with float_decode=False"
        )
    return decode


def quantize_onnx(
    fp32: Path, int8: Path, data: str, imgsz: int, task: str, how: Quantization = DEFAULT, *, images: int | None = None
) -> Path:
    """Write `int8`, the INT8 version of the ONNX file `fp32` of a `task` model quantized as `how` says, calibrated on
    up to `images` (default `CALIBRATION_IMAGES`) of `data`'s training images."""
    int8 = Path(int8)
    with tempfile.TemporaryDirectory(prefix=".yoloslim-quantize-", dir=int8.parent) as tmp:
        source = Path(fp32)
        if how.preprocess:
            source = Path(tmp) / "preprocessed.onnx"
            quant_pre_process(str(fp32), str(source))
        graph = onnx.load(str(source)).graph
        exclude = decode_nodes(graph) if how.float_decode else []
        quantize_static(
            str(source),
            str(int8),
            _Reader(calibration_images(data, imgsz, task, images or CALIBRATION_IMAGES), graph.input[0].name),
            quant_format=QUANT_FORMATS[how.format],
            op_types_to_quantize=sorted(how.ops),
            per_channel=how.per_channel,
            reduce_range=True,
            activation_type=ACTIVATIONS[how.activations],
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
        )
    return int8
