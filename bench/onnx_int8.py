r"""Is onnxruntime INT8 worth shipping: one checkpoint exported to FP32 ONNX, then quantized by each variant of
`yoloslim.quantize.Quantization` (QDQ or QOperator, int8 or uint8 activations, per-tensor or per-channel weights,
the convs only or also the activations between them (SiLU, Add, Concat, ...), the head's decode float, and
onnxruntime's `quant_pre_process` on two of them, plus what yoloslim made before: the DFL conv quantized too). Each
row: file size, batch-1 CPU latency (every file timed side by side in interleaved rounds, medians) and its share of
the FP32 file's, the artifact's own mAP50-95 on --data's val split and its change from the FP32 file's, and the convs
onnxruntime runs as integer kernels once it has loaded the file (QLinearConv; the others are float convs on
dequantized weights) with the Quantize/DequantizeLinear nodes left. The caption names the CPU and its flags,
onnxruntime's version and the commit. Target: at most 0.7x the FP32 latency and at most 1.0 pt under its mAP50-95.
Run it while nothing else uses the CPU.

    python bench/onnx_int8.py --weights runs/compare-hh-v8s/slim/seed0/finetune/weights/last.pt \
        --data datasets/hardhat/hardhat.yaml --imgsz 256 --repeats 50 --out runs/onnx_int8_hardhat.md
"""

from __future__ import annotations

import filecmp
import hashlib
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime

import yoloslim  # noqa: F401  (offline settings first)
from common import cpu, commit, emit, parser, shown, write_csv

from ultralytics.nn.tasks import guess_model_task

from yoloslim import steps
from yoloslim.artifacts import calibration_data, validate_artifact
from yoloslim.checkpoint import check_weights_file, load_model
from yoloslim.deploy import Kind, runner, side_by_side_latency_ms
from yoloslim.quantize import ACTIVATION_OPS, BEFORE, CONV_OPS, DEFAULT, Quantization, quantize_onnx
from yoloslim.sizes import fit_imgsz

TARGET_LATENCY = 0.7  # at most this share of the FP32 file's latency
TARGET_MAP_PT = -1.0  # and at most this many points under its mAP50-95

SWEEP = [
    BEFORE,
    *(
        Quantization(fmt, activations, per_channel, ops)
        for fmt, activations in (("qdq", "s8"), ("qdq", "u8"), ("qoperator", "u8"))  # int8 QOperator: slow on x86
        for per_channel in (False, True)
        for ops in (CONV_OPS, ACTIVATION_OPS)
    ),
    Quantization("qdq", "u8", True, ACTIVATION_OPS, preprocess=True),
    Quantization("qoperator", "u8", True, ACTIVATION_OPS, preprocess=True),
]
COLUMNS = ("variant", "MB", "latency ms", "latency x", "mAP50-95", "vs FP32 (pt)", "int8 convs at load")
COLUMNS += ("Q+DQ at load", "target")
FIELDS = ("variant", "format", "activations", "per_channel", "ops", "float_decode", "preprocess", "size_mb")
FIELDS += ("latency_ms", "latency_x", "map50_95", "map_change_pt", "int8_convs", "float_convs", "qdq_nodes", "target")


def loaded_ops(path: Path) -> Counter:
    """The op types of the graph onnxruntime runs once it has loaded `path` (fused and optimized, all levels)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(Path(tmp) / "loaded.onnx")
        options.log_severity_level = 3  # not the warning that the optimized file is for this CPU only
        onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def variants(names: list[str] | None) -> list[Quantization]:
    """The variants named (`default`, `before`, or FORMAT-ACTIVATIONS-SCALES-OPS[+qdecode][+pre]), or the sweep."""
    if not names:
        return SWEEP
    return [{"default": DEFAULT, "before": BEFORE}.get(n) or Quantization.parse(n) for n in names]


def label(how: Quantization) -> str:
    """A variant's name in the table, marking yoloslim's default and what it made before."""
    return how.name + {DEFAULT: " (default)", BEFORE: " (before)"}.get(how, "")


def main() -> None:
    p = parser(__doc__, data=True, imgsz=320, run_dir="runs/bench-onnx-int8", repeats=50, beside="a CSV")
    p.add_argument("--weights", type=Path, required=True, help="the checkpoint (.pt) to export and quantize")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument("--variants", nargs="+", help="a subset, e.g. default qdq-u8-channel-acts (default: the sweep)")
    p.add_argument("--no-val", action="store_true", help="latency only: no mAP50-95")
    a = p.parse_args()
    try:
        chosen = variants(a.variants)
    except ValueError as e:
        p.error(str(e))
    source = check_weights_file(a.weights)
    reference, _ = load_model(source)
    data = calibration_data(a.data, reference, source)
    imgsz = fit_imgsz(a.imgsz, reference)
    task = guess_model_task(reference)
    where = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:8]  # checkpoints that share a name stay apart
    copy = a.run_dir / f"{source.stem}-{where}-{imgsz}" / "model.pt"
    if not (copy.is_file() and filecmp.cmp(source, copy, shallow=False)):  # a new checkpoint: a fresh folder
        shutil.rmtree(copy.parent, ignore_errors=True)
        copy.parent.mkdir(parents=True)
        shutil.copyfile(source, copy)
    fp32 = copy.with_suffix(".onnx")
    if not fp32.is_file():
        steps.export(copy, imgsz=imgsz)
    files = {"fp32": fp32}
    for i, how in enumerate(chosen, 1):  # made afresh every run: the quantizer may have changed since
        print(f"onnx_int8: [{i}/{len(chosen)}] quantizing {how.name}", flush=True)
        int8 = copy.with_name(f"model_int8_{how.name.replace('+', '_')}.onnx")
        files[how] = quantize_onnx(fp32, int8, data, imgsz, task, how)
    print(f"onnx_int8: timing {len(files)} files side by side, {a.rounds} rounds", flush=True)
    ms = side_by_side_latency_ms({k: runner(f, Kind("onnx")) for k, f in files.items()}, imgsz, a.rounds, a.repeats)
    maps: dict = {}
    for i, (key, f) in enumerate(files.items() if not a.no_val else [], 1):
        print(f"onnx_int8: [{i}/{len(files)}] validating {f.name}", flush=True)
        maps[key] = validate_artifact(f, data, imgsz, reference)
    records = [record(key, f, ms, maps) for key, f in files.items()]
    rows = [cells(r) for r in records]
    met = [r["variant"] for r in records if r["target"] in ("yes", "latency only")]
    target = f"at most {TARGET_LATENCY}x the FP32 latency, " + (
        "mAP not measured (--no-val)" if a.no_val else f"at most {-TARGET_MAP_PT:.1f} pt under its mAP50-95"
    )
    verdict = f"Target ({target}) " + (f"met by: {', '.join(met)}." if met else "met by no variant on this CPU.")
    caption = (
        f"onnxruntime INT8 variants of {shown(source)} at imgsz {imgsz} on {shown(data)}. CPU: {cpu()}; onnxruntime "
        f"{onnxruntime.__version__}; commit {commit()}. Batch-1 latency: median of {a.repeats} runs in {a.rounds} "
        "interleaved rounds, every file side by side; x = share of the FP32 file's. mAP50-95 of each file itself "
        "(batch 1). int8 convs at load: QLinearConv among the convs onnxruntime runs after its graph optimizations; "
        "Q+DQ at load: the QuantizeLinear and DequantizeLinear nodes left there."
    )
    emit(f"{caption}\n\n{verdict}", COLUMNS, rows, a.out)
    if a.out:
        write_csv(a.out.with_suffix(".csv"), FIELDS, [[r[k] for k in FIELDS] for r in records])


def record(key: Quantization | str, path: Path, ms: dict, maps: dict) -> dict:
    """One row's figures: the variant, its file, its latency and mAP against the FP32 file's, its graph at load."""
    how = key if isinstance(key, Quantization) else None
    ops = loaded_ops(path)
    change = None if key not in maps else (maps[key] - maps["fp32"]) * 100
    x = ms[key] / ms["fp32"]
    if how is None:
        meets = "-"
    elif x > TARGET_LATENCY or (change is not None and change < TARGET_MAP_PT):
        meets = "no"
    else:
        meets = "latency only" if change is None else "yes"
    return {
        "variant": "FP32" if how is None else label(how),
        "format": how.format if how else "fp32",
        "activations": how.activations if how else "",
        "per_channel": how.per_channel if how else "",
        "ops": " ".join(sorted(how.ops)) if how else "",
        "float_decode": how.float_decode if how else "",
        "preprocess": how.preprocess if how else "",
        "size_mb": path.stat().st_size / 2**20,
        "latency_ms": ms[key],
        "latency_x": x,
        "map50_95": maps.get(key),
        "map_change_pt": change,
        "int8_convs": ops["QLinearConv"] + ops["ConvInteger"],
        "float_convs": ops["Conv"] + ops["FusedConv"],
        "qdq_nodes": ops["QuantizeLinear"] + ops["DequantizeLinear"],
        "target": meets,
    }


def cells(r: dict) -> list[str]:
    """A row of the table."""
    return [
        r["variant"],
        f"{r['size_mb']:.2f}",
        f"{r['latency_ms']:.2f}",
        f"{r['latency_x']:.3f}",
        "-" if r["map50_95"] is None else f"{r['map50_95']:.4f}",
        "-" if r["map_change_pt"] is None else f"{r['map_change_pt']:+.2f}",
        f"{r['int8_convs']}/{r['int8_convs'] + r['float_convs']}",
        str(r["qdq_nodes"]),
        r["target"],
    ]


if __name__ == "__main__":
    main()
