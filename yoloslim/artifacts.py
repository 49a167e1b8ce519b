"""Exported artifacts: made by Ultralytics' exporter beside a copy of the checkpoint, checked, then put in place; and
the deploy table that sets every model's artifacts side by side.

An FP32 artifact is checked against the torch model's outputs. An INT8 one differs by design, so it is validated on
the dataset instead, next to the FP32 model validated the same way (batch 1, square letterbox, as Ultralytics
validates an exported file). A process killed mid-export, or an artifact that fails its check, never replaces the
previous artifact.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ultralytics.nn.tasks import guess_model_task
from torch import nn

from yoloslim.atomic import check_output_folder, deferred_interrupt, durable_replace
from yoloslim.checkpoint import check_weights_file, load_model
from yoloslim.data import check_classes, resolve_data
from yoloslim.deploy import Kind, output_difference, runner, side_by_side_latency_ms
from yoloslim.model import YOLO
from yoloslim.quantize import quantize_onnx
from yoloslim.report import ModelSize
from yoloslim.sizes import fit_imgsz


def export(
    weights: str | Path,
    *,
    imgsz: int = 640,
    opset: int | None = None,
    kind: str | Kind = "onnx",
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Export a checkpoint with Ultralytics' exporter to `kind`, check the artifact, then put it in place.

    Args:
        weights: the checkpoint; the artifact is written beside it (`best.onnx`, `best_int8_openvino_model/`, ...).
        imgsz: rounded up to the model's stride as Ultralytics does (with a warning).
        opset: ONNX opset (default: Ultralytics' choice).
        kind: format and precision: "onnx", "onnx-int8", "openvino", "openvino-int8", "torchscript", or a `Kind`.
        data: the dataset of an INT8 kind (its train split calibrates, its val split validates).

    Returns:
        `artifact`, `onnx` (the artifact if ONNX), `kind`, `size_mb`, `imgsz`, and `max_diff` (FP32) or `map50_95`
        and `fp32_map50_95` (INT8).

    Raises:
        ValueError: an unknown kind, a missing runtime (the openvino extra), INT8 without data or with a dataset of
            another class count, an unwritable folder, a name too long, a failed check; nothing is written.

    Example:
        >>> export("finetune/weights/best.pt", imgsz=320, kind="onnx-int8", data="data.yaml")["map50_95"]
    """
    kind = Kind.parse(kind) if isinstance(kind, str) else kind
    kind.check()
    source = check_weights_file(weights)
    reference, _ = load_model(source)
    if kind.bits == 8:
        data = calibration_data(data, reference, source)
    final = kind.artifact(source)
    if len(final.name.encode()) > os.pathconf(source.parent, "PC_NAME_MAX"):
        raise ValueError(f"'{final.name}' is too long a file name here: copy the checkpoint to a shorter name")
    kind.check_destination(source)
    check_output_folder(source.parent, "the checkpoint's folder")
    imgsz = fit_imgsz(imgsz, reference)
    args: dict[str, Any] = {"format": kind.format, "imgsz": imgsz}
    if kind.format == "onnx":
        args.update(opset=opset, simplify=True, dynamic=False)
    if kind == Kind("openvino", 8):
        args.update(quantize=8, data=data, split="train")  # calibrated on training images, validated on val
    with tempfile.TemporaryDirectory(prefix=".yoloslim-export-", dir=source.parent) as tmp:
        copy = Path(tmp) / source.name
        shutil.copyfile(source, copy)
        exported = Path(YOLO(copy).export(**args))
        if kind == Kind("onnx", 8):  # quantized here, not by Ultralytics: yoloslim/quantize.py says why
            exported = quantize_onnx(exported, kind.artifact(copy), data, imgsz, guess_model_task(reference))
        check, said = check_artifact(exported, kind, copy, reference, imgsz, data)
        replace_artifact(exported, final)
    size_mb = artifact_bytes(final) / 2**20
    print(f"{kind.name} {final}: {size_mb:.2f} MB at imgsz {imgsz}, {said}")
    onnx = final if kind.format == "onnx" else None
    return {"artifact": final, "onnx": onnx, "kind": kind.name, "size_mb": size_mb, "imgsz": imgsz, **check}


def check_artifact(
    exported: Path, kind: Kind, checkpoint: Path, reference: nn.Module, imgsz: int, data: str | None
) -> tuple[dict[str, float], str]:
    """The check of a fresh artifact and how to say it: FP32, its largest output difference from torch; INT8, its
    own mAP50-95 on `data` next to the FP32 model's."""
    if kind.bits == 8:
        check = {
            "map50_95": validate_artifact(exported, data, imgsz, reference),
            "fp32_map50_95": validate_artifact(checkpoint, data, imgsz, reference),
        }
        return check, f"mAP50-95 {check['map50_95']:.4f} (FP32 model {check['fp32_map50_95']:.4f})"
    check = {"max_diff": output_difference(runner(exported, kind), reference, imgsz)}
    return check, f"largest output difference vs torch {check['max_diff']:.3g}"


def calibration_data(data: str | Path | None, model: nn.Module, source: Path) -> str:
    """The dataset an INT8 export calibrates and is validated on: given, with the model's classes."""
    if data is None:
        raise ValueError("an INT8 export calibrates on a dataset's training images: pass --data your.yaml")
    data = resolve_data(data)
    check_classes(data, model, source, "calibrate on the dataset the model was trained on")
    return data


def validate_artifact(path: Path, data: str, imgsz: int, model: nn.Module) -> float:
    """mAP50-95 on `data` of a checkpoint or an exported artifact, run as Ultralytics runs an exported file: its own
    runtime, batch 1, square letterbox (`rect=False`), so that an artifact and its checkpoint compare like for like."""
    metrics = YOLO(str(path), task=guess_model_task(model)).val(
        data=data, imgsz=imgsz, batch=1, rect=False, project=str(path.parent), name="val", exist_ok=True, plots=False
    )
    return float(metrics.box.map)


def artifact_bytes(path: Path) -> int:
    """The size of an artifact: a file, or every file of an OpenVINO folder."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def replace_artifact(new: Path, final: Path) -> None:
    """Move the checked artifact `new` over `final`: a file atomically; a folder by moving the old one aside first (a
    folder cannot be renamed over a non-empty one), both renames with Ctrl-C held back, the old one put back if the
    second fails, and removed once the new one is in place."""
    if new.is_file():
        durable_replace(new, final)
        return
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    with deferred_interrupt():
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(new, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
    shutil.rmtree(old, ignore_errors=True)


def deploy_table(
    models: dict[str, Path],
    kinds: list[str],
    *,
    data: str | Path,
    imgsz: int,
    work: str | Path,
    rounds: int = 5,
    repeats: int = 50,
) -> list[dict[str, Any]]:
    """For each model (label -> checkpoint, the unpruned one first) and each deployable kind: the artifact's size,
    its batch-1 CPU latency (every artifact timed side by side in interleaved rounds, medians) and the mAP50-95 of the
    artifact itself on `data`. Each checkpoint is copied into `work/<label>-<imgsz>/`, where its artifacts are
    written, and reused while the copy still matches its source."""
    data = resolve_data(data)
    parsed = [Kind.parse(k) for k in kinds]
    rows, runs = [], {}
    for label, checkpoint in models.items():
        source = check_weights_file(checkpoint)
        reference, _ = load_model(source)
        size_at = fit_imgsz(imgsz, reference)
        copy = Path(work) / f"{label}-{size_at}" / "model.pt"
        if not (copy.is_file() and filecmp.cmp(source, copy, shallow=False)):  # a new source: its artifacts too
            shutil.rmtree(copy.parent, ignore_errors=True)
            copy.parent.mkdir(parents=True)
            shutil.copyfile(source, copy)
        size = ModelSize.of(reference, size_at)
        for kind in parsed:
            artifact = kind.artifact(copy)
            made = (
                {}
                if artifact.exists()
                else export(copy, imgsz=size_at, kind=kind, data=data if kind.bits == 8 else None)
            )
            runs[(label, kind.name)] = runner(artifact, kind)
            row = {"model": label, "kind": kind.name, "gflops": size.gflops, "params": size.params}
            row.update(size_mb=artifact_bytes(artifact) / 2**20, artifact=artifact)
            if "map50_95" not in made:  # an INT8 export has validated its artifact already, the same way
                made["map50_95"] = validate_artifact(artifact, data, size_at, reference)
            rows.append({**row, "map50_95": made["map50_95"]})
    ms = side_by_side_latency_ms(runs, size_at, rounds, repeats)
    for row in rows:
        row["latency_ms"] = ms[(row["model"], row["kind"])]
    return rows
