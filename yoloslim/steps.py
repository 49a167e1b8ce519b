"""The workflow steps that the root scripts, the `yoloslim` command and the pipeline run.

Each step takes plain arguments, checks them before doing any work (a one-line error that says what
to fix), and returns the file or figures it produced.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.utils import LOGGER, colorstr
from ultralytics.nn.tasks import yaml_model_load

from yoloslim.atomic import atomic_write_text, durable_replace
from yoloslim.channels import DEFAULT_STREAMS
from yoloslim.checkpoint import check_weights_file, load_model, mark_pruned, save_checkpoint
from yoloslim.data import resolve_data
from yoloslim.model import YOLO
from yoloslim.onnxrt import max_output_difference
from yoloslim.plots import plot_gamma_histograms
from yoloslim.prune import DEFAULT_IMPORTANCE, Pruner, check_amount, check_ratio, prune_model
from yoloslim.report import ModelSize, layer_table, prune_summary, write_layer_csv
from yoloslim.sparsity import gamma_stats, prunable_gammas
from yoloslim.taylor import ESTIMATE_BATCHES, estimate_taylor
from yoloslim.trainer import SLIM_ARGS, check_slim_args

PREFIX = colorstr("yoloslim:")


def check_model_source(weights: str | Path) -> str:
    """A `--weights` value: an existing .pt checkpoint, or a model yaml (a file, or a built-in like yolov8n.yaml)."""
    suffix = Path(weights).suffix
    if suffix in {".yaml", ".yml"}:
        try:
            yaml_model_load(str(weights))  # resolves scaled names: yolov8n.yaml -> yolov8.yaml, scale n
        except FileNotFoundError:
            raise FileNotFoundError(
                f"model yaml '{weights}' not found: pass a model yaml file or a built-in one such as yolov8n.yaml"
            ) from None
        return str(weights)
    return str(check_weights_file(weights))


def _project(project: str | Path) -> str:
    """The project folder as an absolute path (Ultralytics would put a relative one under its own runs dir)."""
    return str(Path(project).resolve())


def trained_with(weights: str | Path) -> dict[str, Any]:
    """The training arguments saved in a checkpoint (empty when it has none)."""
    _, ckpt = load_model(weights)
    return dict(ckpt.get("train_args") or {})


def train(
    weights: str | Path,
    data: str | Path | None,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str | None,
    project: str | Path,
    name: str,
    sr: float = 0.0,
    finetune: bool = False,
    sparsity: float = 0.0,
    **overrides: Any,
) -> Path:
    """Train with `SlimTrainer` (normal with sr=0, sparsity with sr>0 and/or a `sparsity` target, fine-tuning
    with finetune=True, learning from a teacher with `distill_model=` its .pt).

    Returns the best checkpoint. The run folder `project/name` is reused (overwritten) so that the
    steps' default paths chain. The learning rate and warm-up of a stage are the trainer's (`SlimMixin`): stock
    Ultralytics for normal training, a tenth of the rate with every rate warming up from 0 for a stage that
    continues a trained .pt.
    """
    check_slim_args({**overrides, "sr": sr, "finetune": finetune, "sparsity": sparsity})  # a copy
    source = check_model_source(weights)
    run = Path(_project(project)) / name
    if Path(source).resolve().is_relative_to(run):
        raise ValueError(f"the run folder '{run}' holds the input weights '{source}': choose another --name")
    data = resolve_data(data)
    model = YOLO(source)
    model.train(
        data=data,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        project=str(run.parent),
        name=name,
        exist_ok=True,
        sr=sr,
        finetune=finetune,
        sparsity=sparsity,
        **overrides,
    )
    best = Path(model.trainer.best)
    return best if best.exists() else Path(model.trainer.last)


def gamma_report(
    weights: list[str | Path],
    out: str | Path,
    labels: list[str] | None = None,
    side_by_side: bool = False,
    ratio: float | None = None,
) -> Path:
    """Histograms of the prunable gammas of one or more checkpoints (PNG), with a text summary beside it.

    With `ratio`, the plot marks the gamma threshold that pruning the last checkpoint at that ratio uses.
    """
    paths = [check_weights_file(w) for w in weights]
    labels = labels or [_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} labels for {len(paths)} checkpoints: give one label per checkpoint")
    models = [load_model(path)[0] for path in paths]
    gammas = {label: prunable_gammas(model) for label, model in zip(labels, models, strict=True)}
    threshold = None
    if ratio is not None:
        check_ratio(ratio)
        plan = Pruner(models[-1]).plan(ratio)
        threshold = (f"prune {ratio:g} of {labels[-1]}", max(plan.max_removed, 0.0))
    out = Path(out)
    plot_gamma_histograms(
        {k: np.concatenate([g.detach().abs().numpy().ravel() for g in v]) for k, v in gammas.items()},
        out,
        side_by_side=side_by_side,
        threshold=threshold,
    )
    lines = [f"{'checkpoint':<24} {'channels':>8} {'median':>8} {'<1e-2':>7}  file"]
    for (label, values), path in zip(gammas.items(), paths, strict=True):
        s = gamma_stats(values)
        lines.append(
            f"{label:<24} {sum(g.numel() for g in values):>8} {s['sparsity/median_gamma']:>8.4f} "
            f"{s['sparsity/share_lt_0.01']:>7.1%}  {path}"
        )
    if threshold:
        lines.append(f"gamma threshold of '{threshold[0]}': {threshold[1]:.4g} (largest |gamma| removed)")
    text = "\n".join(lines)
    atomic_write_text(out.with_suffix(".txt"), text + "\n")
    print(text)
    LOGGER.info(f"{PREFIX} gamma histograms saved to {out}")
    return out


def _label(path: Path) -> str:
    """A short label for a checkpoint: its run folder name for Ultralytics' weights/best.pt layout."""
    return path.parent.parent.name if path.parent.name == "weights" else path.stem


def prune(
    weights: str | Path,
    ratio: float | None,
    save_dir: str | Path,
    round_to: int = 1,
    fold: bool = True,
    min_keep: float = 0.05,
    data: str | Path | None = None,
    target: tuple[str, float] | None = None,
    importance: str = DEFAULT_IMPORTANCE,
    streams: bool = DEFAULT_STREAMS,
) -> Path:
    """Prune a checkpoint to a channel `ratio` or to a compute `target` (("gflops", 0.4): keep 40% of the
    GFLOPs); write `save_dir/pruned.pt` and the per-layer report (text and CSV) beside it.

    The input is never modified, and the output is written atomically. With `data`, the pruned model
    (before fine-tuning) is validated on it.
    """
    check_amount(ratio, target)
    source = check_weights_file(weights)
    save_dir = Path(save_dir)
    out = save_dir / "pruned.pt"
    if out.resolve() == source.resolve():
        raise ValueError(f"--save-dir '{save_dir}' would overwrite the input '{source}': choose another folder")
    model, ckpt = load_model(source)
    data = resolve_data(data) if data is not None else None
    imgsz = int((ckpt.get("train_args") or {}).get("imgsz") or 640)
    args = {"round_to": round_to, "fold": fold, "min_keep": min_keep, "importance": importance, "streams": streams}
    ranking = importance
    if importance == "taylor":
        # an unsupported model or an unreachable target says so before the training data is looked for and read
        probe = Pruner(model, round_to=round_to, min_keep=min_keep, streams=streams)
        if target:
            probe.plan_budget(*target)
        LOGGER.info(f"{PREFIX} Taylor importance from {ESTIMATE_BATCHES} batches of the training images")
        ranking = estimate_taylor(model, ranking_data(data, ckpt), imgsz, streams=streams)
    pruned, plan, changes = prune_model(model, ratio, target, **{**args, "importance": ranking})
    before, after = ModelSize.of(model, imgsz), ModelSize.of(pruned, imgsz)
    _warn_if_not_sparse(model, plan.max_removed)
    info = {"ratio": ratio, "target": list(target) if target else None, "source": str(source.resolve())}
    info.update(threshold=plan.threshold, max_removed=plan.max_removed, removed=plan.removed, **args)
    mark_pruned(pruned, info)
    train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k not in SLIM_ARGS}
    summary = prune_summary(before, after, plan, target)
    save_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(save_dir / "prune_report.txt", f"{layer_table(changes)}\n\n{summary}\n")
    write_layer_csv(changes, save_dir / "prune_layers.csv")
    save_checkpoint(pruned, out, train_args=train_args)  # last: its presence means the step finished
    print(layer_table(changes), "", summary, sep="\n")
    LOGGER.info(f"{PREFIX} pruned model saved to {out} (report: {save_dir / 'prune_report.txt'})")
    if data:
        validate(out, data, imgsz=imgsz, project=save_dir, name="val")
    return out


def ranking_data(data: str | None, ckpt: dict[str, Any]) -> str:
    """The dataset whose training images a gradient-based ranking reads: `data`, else the checkpoint's own."""
    if data:
        return data
    trained_on = (ckpt.get("train_args") or {}).get("data")
    if trained_on and Path(trained_on).is_file():
        return str(trained_on)
    raise ValueError(
        f"importance 'taylor' needs the training images, and the checkpoint's dataset '{trained_on}' is not here: "
        "pass --data your.yaml (or --importance gamma)"
    )


NOT_SPARSE_THRESHOLD = 0.05  # sparse training leaves the gammas it prunes near 0; initial gammas are 1


def _warn_if_not_sparse(model: Any, max_removed: float) -> None:
    """Say so when pruning removes channels that were far from zero (not sparse-trained, or pruned past its target)."""
    if max_removed > NOT_SPARSE_THRESHOLD:
        share = gamma_stats(prunable_gammas(model))["sparsity/share_lt_0.01"]
        why = (
            f"the model was sparse-trained to {share:.0%} of gammas < 0.01 and this ratio prunes past that: "
            "expect an accuracy drop before fine-tuning (prune at most that share, or train to a higher --sparsity)"
            if share > 0
            else "this model looks not sparse-trained (0% of gammas < 0.01): expect a large accuracy drop before "
            "fine-tuning (run train_sparsity.py first, or prune less)"
        )
        LOGGER.warning(f"{PREFIX} pruning removes channels far from zero (|gamma| up to {max_removed:.3g}); {why}")


def validate(
    weights: str | Path,
    data: str | Path | None,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    project: str | Path = "runs/yoloslim",
    name: str = "val",
) -> dict[str, float]:
    """Validate a checkpoint; print Ultralytics' metrics table and the parameters / GFLOPs line."""
    source = check_weights_file(weights)
    data = resolve_data(data)
    model = YOLO(source)
    size = ModelSize.of(model.model, imgsz)  # before val, which fuses conv and BN in place
    metrics = model.val(
        data=data,
        imgsz=imgsz,
        batch=batch,
        device=device,
        project=_project(project),
        name=name,
        exist_ok=True,
        plots=False,
    )
    print(f"{source}: {size}")
    return {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "params": size.params,
        "gflops": size.gflops,
    }


def export(weights: str | Path, imgsz: int = 640, opset: int | None = None) -> dict[str, Any]:
    """Export a checkpoint to ONNX with Ultralytics' exporter, then check it with onnxruntime.

    Ultralytics writes the file in place; here it exports a copy of the checkpoint in a temporary folder
    beside it and renames the finished file next to the checkpoint, so a process killed mid-export never
    leaves a partial ONNX file where a rerun would trust it. Prints and returns the file, its size and the
    largest output difference against the torch model.
    """
    source = check_weights_file(weights)
    final = source.with_suffix(".onnx")
    with tempfile.TemporaryDirectory(prefix=f".{source.stem}-export-", dir=source.parent) as tmp:
        copy = Path(tmp) / source.name
        shutil.copyfile(source, copy)
        exported = Path(YOLO(copy).export(format="onnx", imgsz=imgsz, opset=opset, simplify=True, dynamic=False))
        durable_replace(exported, final)
    reference, _ = load_model(source)
    diff = max_output_difference(final, reference, imgsz)
    size_mb = os.path.getsize(final) / 2**20
    print(f"ONNX {final}: {size_mb:.2f} MB, largest output difference vs torch {diff:.3g}")
    return {"onnx": final, "size_mb": size_mb, "max_diff": diff}
