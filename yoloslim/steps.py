"""The workflow steps that the root scripts, the `yoloslim` command and the pipeline run.

Each step takes plain arguments, checks them before doing any work (a one-line error that says what
to fix), and returns the file or figures it produced.
"""

from __future__ import annotations

import tempfile
from copy import deepcopy
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import yaml_model_load
from ultralytics.utils import LOGGER, colorstr

from yoloslim.artifacts import deploy_table, export  # noqa: F401  (steps of the workflow, made there)
from yoloslim.atomic import (
    check_output_folder,
    check_outputs_apart,
    removed_unless_started,
    write_set,
)
from yoloslim.checkpoint import (
    check_weights_file,
    checkpoint_bytes,
    earlier_run,
    finished_training,
    load_model,
    mark_pruned,
    readable,
)
from yoloslim.data import check_classes, recorded_data, resolve_data
from yoloslim.deploy import Kind, onnx_runners, side_by_side_latency_ms
from yoloslim.fingerprint import INPUTS, differs as inputs_differ, inputs as run_inputs  # noqa: F401  (run folders)
from yoloslim.importance import Importance, Source, gamma_importance, make_importance
from yoloslim.latency import LatencyProbe, search_gflops
from yoloslim.model import YOLO
from yoloslim.plots import gamma_histograms_png
from yoloslim.prune import Pruner, check_amount, prune_model
from yoloslim.reconstruct import Repair, repair
from yoloslim.report import ModelSize, fit_table, layer_csv, layer_table, prune_summary
from yoloslim.sizes import fit_imgsz
from yoloslim.sparsity import gamma_stats, prunable_gammas
from yoloslim.settings import (
    PROJECT,
    SLIM_ARGS,
    Ranking,
    check_batch,
    check_imgsz,
    check_latency_target,
    check_ratio,
    check_whole,
)
from yoloslim.trainer import TRAINERS, check_slim_args

PREFIX = colorstr("yoloslim:")
PRUNED = "pruned.pt"  # the checkpoint a prune writes into its save_dir


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


def say(message: str) -> None:
    """One line of the workflow's progress in Ultralytics' log, prefixed `yoloslim:`."""
    LOGGER.info(f"{PREFIX} {message}")


def check_inputs(
    weights: str | Path,
    *,
    data: str | Path | None,
    imgsz: int,
    kinds: Sequence[str] = (),
    train_args: dict[str, Any] | None = None,
) -> tuple[str, int]:
    """Check what a sequence of steps will read before the first one runs: the start `weights` (of a task yoloslim
    trains), the dataset, the deployable `kinds` (known, their runtime installed) and the Ultralytics training
    arguments every stage passes on (by Ultralytics' own rules for names and types).

    Returns:
        The dataset's yaml (the demo set made when asked for) and `imgsz` rounded up to the model's stride, the
        size every step of the sequence then uses.
    """
    model = _of_trained_task(check_model_source(weights))
    for kind in kinds:
        Kind.parse(kind)
    try:
        check_training_args(train_args or {})
    except ValueError as e:
        raise ValueError(f"--train-args: {e}") from None
    return resolve_data(data), fit_imgsz(imgsz, model.model)


def check_training_args(args: dict[str, Any]) -> None:
    """Refuse a training argument Ultralytics does not know or cannot take (its own `get_cfg` checks of names and
    types; yoloslim's own arguments, `SLIM_ARGS`, are left to their checks), with the first line of its message."""
    try:
        get_cfg(overrides={k: v for k, v in args.items() if k not in SLIM_ARGS})
    except (SyntaxError, TypeError, ValueError) as e:
        raise ValueError(str(e).strip().splitlines()[0]) from None


def onnx_latency_ms(files: Sequence[Path], imgsz: int, repeats: int) -> dict[Path, float]:
    """onnxruntime CPU batch-1 latency of each ONNX file, measured side by side now (interleaved rounds)."""
    return side_by_side_latency_ms(onnx_runners(list(files)), imgsz, repeats=repeats)


def trained_with(weights: str | Path) -> dict[str, Any]:
    """The training arguments saved in a checkpoint (empty when it has none)."""
    _, ckpt = load_model(weights)
    return dict(ckpt.get("train_args") or {})


def train(
    weights: str | Path,
    *,
    data: str | Path | None,
    epochs: int,
    imgsz: int,
    batch: int = 16,
    device: str | None = None,
    project: str | Path = PROJECT,
    name: str = "train",
    resume: bool = False,
    **slim_and_ultralytics_args: Any,
) -> Path:
    """Train with `SlimTrainer`: normal with sr=0, sparsity with sr>0 and/or a `sparsity` target, fine-tuning
    with finetune=True, learning from a teacher with `distill_model=` its .pt.

    The run folder `project/name` is reused (overwritten) so that the steps' default paths chain. The learning rate
    and warm-up of a stage are the trainer's (`SlimMixin`): stock Ultralytics for normal training, a tenth of the
    rate with every rate warming up from 0 for a stage that continues a trained .pt.

    Args:
        weights: a .pt checkpoint, or a model yaml (yolov8n.yaml).
        data: dataset yaml; None or "demo" for the built-in synthetic set.
        epochs, imgsz, batch, device: as Ultralytics takes them (imgsz and batch checked here: whole numbers > 0,
            batch -1 for AutoBatch).
        project, name: the run folder `project/name`.
        resume: pick up the run folder's own run: a finished one is returned as it is, an interrupted one is
            resumed (Ultralytics' resume, with the zeroing's state), a truncated last.pt is set aside and the stage
            starts again.
        **slim_and_ultralytics_args: the slimming settings (`sr`, `sparsity` or `target_gflops`, `importance`,
            `streams`, `round_to`, `finetune`, `lr_scale`: settings.py) and any Ultralytics training argument.

    Returns:
        The best checkpoint (last.pt when no best.pt was written).

    Raises:
        ValueError: a bad slimming argument, size, model or dataset, before any run folder is made.
        FileNotFoundError: missing weights or dataset.

    Example:
        >>> best = steps.train("yolov8n.yaml", data="demo", epochs=30, imgsz=160, name="normal")
        >>> sparse = steps.train(best, data="demo", epochs=30, imgsz=160, name="sparse", sr=1e-2, sparsity=0.5)
    """
    args = {"sr": 0.0, "finetune": False, "sparsity": 0.0, **slim_and_ultralytics_args}
    check_slim_args(dict(args))
    epochs, imgsz, batch = check_whole("epochs", epochs), check_imgsz(imgsz), check_batch(batch)
    source = check_model_source(weights)
    run = Path(_project(project)) / name
    if resume and (done := _resumed(run / "weights" / "last.pt")):
        return done
    model = _trainable(source, run)
    where = {"data": resolve_data(data), "project": str(run.parent), "name": name, "exist_ok": True}
    with removed_unless_started(run, started=lambda folder: any((folder / "weights").glob("*.pt"))):
        model.train(epochs=epochs, imgsz=imgsz, batch=batch, device=device, **where, **args)
    return _best(Path(model.trainer.last))


def _trainable(source: str, run: Path) -> YOLO:
    """The model of `source` to train in the run folder `run`: one of a task yoloslim trains, and not read from
    inside the folder its run overwrites."""
    if Path(source).resolve().is_relative_to(run):
        raise ValueError(f"the run folder '{run}' holds the input weights '{source}': choose another --name")
    return _of_trained_task(source)


def _of_trained_task(source: str) -> YOLO:
    """The model of `source`, refused unless of a task yoloslim trains."""
    model = YOLO(source)
    if model.task not in TRAINERS:
        raise ValueError(
            f"'{source}' is a {model.task} model: yoloslim trains the tasks {sorted(TRAINERS)} (give a detection, "
            "segmentation, pose or OBB checkpoint or yaml)"
        )
    return model


def _best(last: Path) -> Path:
    """The best checkpoint beside a run's last.pt (last.pt itself when no best.pt was written)."""
    best = last.with_name("best.pt")
    return best if best.exists() else last


def _resumed(last: Path) -> Path | None:
    """The run of `last` (a last.pt): its best checkpoint when finished, or after resuming it when interrupted;
    None when there is no run to pick up (none, or a truncated last.pt, which is set aside)."""
    if readable(last) and finished_training(last):
        LOGGER.info(f"{PREFIX} {last.parent.parent} has finished its training: kept as it is")
        return _best(last)
    if readable(last):
        model = YOLO(last)
        model.train(resume=True)
        return _best(Path(model.trainer.last))
    if last.exists():  # killed while Ultralytics wrote it: start the stage again
        LOGGER.warning(f"{PREFIX} {last} is truncated or unreadable; the stage starts again")
        last.replace(last.with_name("last.pt.unreadable"))
    return None


def finished_run(project: str | Path, name: str) -> bool:
    """Whether the training run folder `project/name` holds a finished run."""
    last = Path(_project(project)) / name / "weights" / "last.pt"
    return readable(last) and finished_training(last)


def gamma_report(
    weights: list[str | Path],
    *,
    out: str | Path,
    labels: list[str] | None = None,
    side_by_side: bool = False,
    ratio: float | None = None,
) -> Path:
    """Histograms of the prunable gammas of one or more checkpoints (PNG), with a text summary beside it.

    Args:
        weights: the checkpoints, e.g. before and after sparsity training.
        out: the PNG file to write (`out` with `.txt` gets the summary).
        labels: one per checkpoint (default: run folder names, made unique).
        side_by_side: one panel per checkpoint instead of overlaid histograms.
        ratio: mark the gamma threshold that pruning the last checkpoint at this ratio uses.

    Returns:
        The PNG file.

    Raises:
        ValueError: labels that do not match the checkpoints or repeat, `out` a folder or not writable.

    Example:
        >>> steps.gamma_report(["normal/weights/best.pt", "sparse/weights/best.pt"], out="gamma.png", ratio=0.5)
    """
    paths = [check_weights_file(w) for w in weights]
    labels = labels or _labels(paths)
    if len(labels) != len(paths):
        raise ValueError(f"got {len(labels)} labels for {len(paths)} checkpoints: give one label per checkpoint")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels {labels} repeat a name: give each checkpoint its own label (--labels)")
    out = Path(out)
    if out.is_dir() or out.suffix.lower() != ".png":
        raise ValueError(f"--out '{out}' is not a .png file: give the PNG file to write, e.g. gamma_hist.png")
    check_output_folder(out.parent, "--out")
    check_outputs_apart({"--out": out, "its text summary": out.with_suffix(".txt")}, paths)
    models = [load_model(path)[0] for path in paths]
    gammas = {label: prunable_gammas(model) for label, model in zip(labels, models, strict=True)}
    threshold = None
    if ratio is not None:
        check_ratio(ratio)
        plan = Pruner(models[-1], importance=gamma_importance).plan(ratio)  # the histogram's threshold, in gamma
        threshold = (f"prune {ratio:g} of {labels[-1]}", max(plan.max_removed, 0.0))
    png = gamma_histograms_png(
        {k: np.concatenate([g.detach().abs().numpy().ravel() for g in v]) for k, v in gammas.items()},
        side_by_side=side_by_side,
        threshold=threshold,
    )
    text = _gamma_summary(gammas, paths, threshold)
    # one set: a failure while writing leaves the earlier PNG and summary together, never one of each
    write_set(out.parent, {out.with_suffix(".txt").name: (text + "\n").encode(), out.name: png}, last=out.name)
    print(text)
    LOGGER.info(f"{PREFIX} gamma histograms saved to {out}")
    return out


def _gamma_summary(gammas: dict[str, list], paths: list[Path], threshold: tuple[str, float] | None) -> str:
    """The text beside the histograms: channels, median |gamma| and the share under 0.01 per checkpoint."""
    lines = [f"{'checkpoint':<24} {'channels':>8} {'median':>8} {'<1e-2':>7}  file"]
    for (label, values), path in zip(gammas.items(), paths, strict=True):
        s = gamma_stats(values)
        lines.append(
            f"{label:<24} {sum(g.numel() for g in values):>8} {s['sparsity/median_gamma']:>8.4f} "
            f"{s['sparsity/share_lt_0.01']:>7.1%}  {path}"
        )
    if threshold:
        lines.append(f"gamma threshold of '{threshold[0]}': {threshold[1]:.4g} (largest |gamma| removed)")
    return "\n".join(lines)


def _labels(paths: list[Path]) -> list[str]:
    """Short labels for checkpoints: the run folder name for Ultralytics' weights/best.pt layout, else the file
    stem; where two would be the same, as many trailing folders as tell them apart (`a/best`, `b/best`)."""
    labels = [p.parent.parent.name if p.parent.name == "weights" else p.stem for p in paths]
    parts = [p.resolve().with_suffix("").parts for p in paths]
    for depth in range(2, max(map(len, parts)) + 1):
        if len(set(labels)) == len(labels):
            break
        labels = ["/".join(q[-depth:]) for q in parts]
    return labels


def prune(
    weights: str | Path,
    *,
    ratio: float | None = None,
    save_dir: str | Path,
    ranking: Ranking = Ranking(),
    fold: bool = True,
    data: str | Path | None = None,
    target: tuple[str, float] | None = None,
    allow_unchanged: bool = False,
    runtime: str = "onnx",
    validate_pruned: bool = True,
    how: Repair = Repair(),
) -> Path:
    """Prune a checkpoint to a channel `ratio`, a compute `target` (("gflops", 0.4): keep 40% of the GFLOPs) or a
    latency target (("latency", 0.5): half the unpruned latency on `runtime`, found by measuring, `latency.py`).
    The input is never modified; pruned.pt, prune_report.txt and prune_layers.csv go into `save_dir` as one set.

    Args:
        weights: the (sparse-trained) checkpoint.
        ratio, target: the amount: a share of prunable channels in [0, 1), or (kind, share); exactly one.
        save_dir: the folder of the three files.
        ranking, fold: as `Pruner` takes them (`settings.Ranking`: importance, streams, round_to, min_keep).
        data: repair the pruned model from its training images as `how` says (`reconstruct.Repair`) and validate it
            on it if `validate_pruned`; Taylor ranks on its training images (default: the checkpoint's).
        allow_unchanged: save even when floors and rounding leave every layer whole (else an error, unless ratio 0
            or a target of 1 asked for that).
        runtime: where a latency target is measured ("onnx" or "openvino").

    Returns:
        The path of pruned.pt.

    Raises:
        ValueError, UnsupportedModuleError, FileNotFoundError: a bad amount, an unreachable target, an unwritable
            folder, a prune that removes nothing; a block no channel rule covers; missing weights.

    Example:
        >>> steps.prune("best.pt", save_dir="pruned/", target=("gflops", 0.4), ranking=Ranking(round_to=8))
    """
    latency = _latency_asked(target, runtime)
    ratio, target = check_amount(ratio, ("gflops", 1.0) if latency is not None else target)
    source, out = _prune_paths(weights, Path(save_dir))
    model, ckpt = _load_source(source)
    data, imgsz = resolve_data(data) if data is not None else None, trained_imgsz(ckpt)
    if isinstance(latency, Path):
        _check_reference(latency, model, imgsz, out)
    importance = _importance(model, ranking, target, lambda: ranking_data(data, ckpt, source, model), imgsz)
    said, asked = "", {}  # a latency target's line in the report, and what the checkpoint records of it
    if latency:  # the GFLOPs share whose pruned model runs at the asked latency, by measuring
        pruner = Pruner(deepcopy(model).float().eval(), ranking, importance, fold)
        target, said, asked = _latency_budget(pruner, latency, imgsz, runtime, allow_unchanged)
    info = {**_prune_info(ratio, target, source, ranking, fold), **asked}
    info["repair"] = asdict(how) if data else None
    pruned, plan, changes = _cut(model, ratio, target, (ranking, importance, fold), allow_unchanged, info)
    fits = _repair(model, pruned, plan.keep, data, imgsz, how)
    summary = prune_summary(ModelSize.of(model, imgsz), ModelSize.of(pruned, imgsz), plan, target) + said
    _write_pruned(out, pruned, changes, f"{summary}\n\n{fit_table(fits)}" if fits else summary, ckpt)
    if data and validate_pruned:
        validate(out, data=data, imgsz=imgsz, project=out.parent, name="val")
    return out


def _load_source(source: Path) -> tuple[Any, dict[str, Any]]:
    """The model to prune and its checkpoint; says so when the checkpoint was saved by an earlier run in its folder
    than the one its args.yaml describes (`checkpoint.earlier_run`)."""
    model, ckpt = load_model(source)
    if why := earlier_run(source, ckpt):
        LOGGER.warning(
            f"{PREFIX} '{source}' was saved by an earlier run in this folder than the one its args.yaml describes "
            f"({why}): it is not that run's model; prune that run's last.pt, or let it finish"
        )
    return model, ckpt


def _latency_asked(target: tuple[str, Any] | None, runtime: str) -> float | Path | None:
    """What a ("latency", share) target asks for (checked, with its runtime), else None."""
    if not (target and target[0] == "latency"):
        return None
    latency = check_latency(target[1])
    Kind(runtime).check()
    return latency


def check_latency(value: Any) -> float | Path:
    """A latency target: a share in (0, 1] of the unpruned model's latency, or a checkpoint (a `Path`) whose latency
    to run at (`--target-latency-of`; read by `_check_reference` before anything is measured)."""
    if not isinstance(value, Path):
        return check_latency_target(value)
    if value.suffix != ".pt" or not value.is_file():
        raise ValueError(
            f"--target-latency-of '{value}' is not a .pt file here: give the checkpoint of the model to run as fast as"
        )
    return value


def _check_reference(reference: Path, model: Any, imgsz: int, out: Path | None = None) -> None:
    """Refuse a model to run as fast as that is the output this run writes (`out`), or the same network as the model
    to prune (it cannot be faster, and timing noise alone would choose a cut)."""
    if out is not None and reference.resolve() == out.resolve():
        raise ValueError(
            f"--target-latency-of '{reference}' is the {PRUNED} this run would write: copy it elsewhere first, or "
            "choose another --save-dir; nothing written"
        )
    theirs, ours = ModelSize.of(load_model(reference)[0], imgsz), ModelSize.of(model, imgsz)
    if (theirs.gflops, theirs.params) == (ours.gflops, ours.params):
        raise ValueError(
            f"--target-latency-of '{reference}' is the same network as the model to prune ({ours.gflops:.2f} GFLOPs): "
            "it cannot run faster; give a smaller model, or --target-latency with a share; nothing written"
        )


def _latency_budget(
    pruner: Pruner, latency: float | Path, imgsz: int, runtime: str, allow_unchanged: bool
) -> tuple[tuple[str, float], str, dict[str, Any]]:
    """The GFLOPs target whose model, pruned by `pruner` (on a copy), runs at `latency` of the unpruned latency (or at
    that of the checkpoint `latency`) on `runtime`, found by measuring (`gflops_for_latency`); the report's line on
    what was asked and measured ("" for the whole latency); what the pruned checkpoint records of it."""
    share, measured, asked = gflops_for_latency(pruner, latency, imgsz, runtime, allow_unchanged)
    of = f" ('{latency}' measured beside it)" if isinstance(latency, Path) else ""
    said = (
        f"\ntarget latency: {asked:.3g}x the unpruned model's{of} on {runtime} (batch 1, imgsz {imgsz}); measured "
        f"{measured:.3f}x, before any repair (a repair changes weights, not widths)"
    )
    record = {"target_latency": asked, "runtime": runtime}
    record |= {"target_latency_of": str(latency.resolve())} if isinstance(latency, Path) else {}
    return ("gflops", share), said if asked < 1 else "", record


def _repair(model: Any, pruned: Any, keep: dict, data: str | None, imgsz: int, how: Repair) -> list:
    """Repair `pruned` from `data`'s training images as `how` says (`reconstruct.repair`); say so when there is no
    data to repair from. The fits made."""
    if how.active and not data:
        LOGGER.info(f"{PREFIX} no --data: the pruned model is not repaired (the repair reads the training images)")
    return repair(model, pruned, keep, data, imgsz, how) if data and how.active else []


def _prune_info(
    ratio: float | None,
    target: tuple | None,
    source: Path,
    ranking: Ranking,
    fold: bool,
) -> dict[str, Any]:
    """What a pruned checkpoint records of how it was made (`checkpoint.pruned_info`; a latency target's entries are
    added by `prune`)."""
    return {
        "ratio": ratio,
        "target": list(target) if target else None,
        "source": str(source.resolve()),
        **asdict(ranking),
        "fold": fold,
    }


def _cut(
    model: Any,
    ratio: float | None,
    target: tuple[str, float] | None,
    how: tuple[Ranking, Importance, bool],
    allow_unchanged: bool,
    info: dict[str, Any],
) -> tuple[Any, Any, list]:
    """`prune_model` at the amount, `how` (the ranking, its criterion made, fold), marked pruned with `info` and the
    plan's figures; refused when it removes nothing that was not asked for, and said when it removes channels far
    from zero."""
    pruned, plan, changes = prune_model(model, ratio, target, *how)
    ranking = how[0]
    asked_nothing = ratio == 0 or (target is not None and target[1] == 1)  # ratio 0 / the whole budget: as it is
    if plan.removed == 0 and not asked_nothing and not allow_unchanged:
        raise ValueError(
            f"pruning at {ratio if target is None else f'{target[0]}={target[1]:g}'} removes no channel "
            f"(round_to={ranking.round_to} and min_keep={ranking.min_keep:g} keep every layer whole): lower "
            "--round-to or --min-keep, or pass --allow-unchanged to save the model as it is; nothing written"
        )
    _warn_if_not_sparse(model, plan.max_removed)
    mark_pruned(pruned, {**info, "threshold": plan.threshold, "max_removed": plan.max_removed, "removed": plan.removed})
    return pruned, plan, changes


def trained_imgsz(ckpt: dict[str, Any]) -> int:
    """The image size a checkpoint was trained at (640 when it does not say)."""
    return int((ckpt.get("train_args") or {}).get("imgsz") or 640)


def _prune_paths(weights: str | Path, save_dir: Path) -> tuple[Path, Path]:
    """The checkpoint to prune and the pruned.pt to write: never the same file, in a folder that can be written."""
    source = check_weights_file(weights)
    out = save_dir / PRUNED
    if out.resolve() == source.resolve():
        raise ValueError(f"--save-dir '{save_dir}' would overwrite the input '{source}': choose another folder")
    check_output_folder(save_dir, "--save-dir")
    return source, out


def _importance(
    model: Any, ranking: Ranking, target: tuple[str, float] | None, data: Callable[[], str], imgsz: int
) -> Importance:
    """The ranking's criterion, made (`importance.make_importance`; a gradient criterion reads the training images
    of `data()`, called only then). An unsupported model or an unreachable target says so before any image is
    read."""
    probe = Pruner(model, ranking, gamma_importance)  # the graph and the floors: no score is read
    if target:
        probe.plan_budget(*target)
    return make_importance(ranking.importance, Source(model, data, imgsz, ranking.streams))


def _write_pruned(out: Path, pruned: Any, changes: list, summary: str, ckpt: dict[str, Any]) -> None:
    """pruned.pt (with the source's Ultralytics training arguments), the per-layer report and CSV, as one set."""
    train_args = {k: v for k, v in (ckpt.get("train_args") or {}).items() if k not in SLIM_ARGS}
    files = {
        "prune_report.txt": f"{layer_table(changes)}\n\n{summary}\n".encode(),
        "prune_layers.csv": layer_csv(changes).encode(),
        out.name: checkpoint_bytes(pruned, train_args),
    }
    write_set(out.parent, files, last=out.name)  # pruned.pt last: its presence means the step finished
    print(layer_table(changes), "", summary, sep="\n")
    LOGGER.info(f"{PREFIX} pruned model saved to {out} (report: {out.parent / 'prune_report.txt'})")


def gflops_for_latency(
    pruner: Pruner, latency: float | Path, imgsz: int, runtime: str = "onnx", allow_unchanged: bool = False
) -> tuple[float, float, float]:
    """The GFLOPs share at which `pruner`'s model, pruned, runs at `latency` of its unpruned latency on `runtime`
    (measured: `latency.search_gflops`), the latency share measured there, and the share asked: `latency` itself, or,
    when `latency` is another checkpoint, that model's latency as a share of the unpruned one's, timed side by side.

    Raises:
        ValueError: the share found removes no channel (unless `allow_unchanged`): the model as it is runs as near
            the target as the search got; a reference model that does not run faster than the unpruned one.
    """
    with tempfile.TemporaryDirectory(prefix="yoloslim-latency-") as work:
        probe = LatencyProbe(pruner, imgsz, Path(work), runtime=runtime)
        asked = _reference_share(probe.checkpoint(latency), latency) if isinstance(latency, Path) else latency
        search = search_gflops(asked, probe.share, pruner.min_cost_share("gflops"))
    share, reached = search.best
    if asked < 1 and not allow_unchanged and pruner.plan_budget("gflops", share).removed == 0:
        raise ValueError(
            f"target latency {asked:.3g} on {runtime} needs no pruning: the share found, {share:.3f}x GFLOPs, keeps "
            f"every channel (measured {reached:.3f}x); lower the target, or pass --allow-unchanged to save the model "
            "as it is; nothing written"
        )
    LOGGER.info(f"{PREFIX} target latency {asked:.3g} on {runtime}: {share:.3f}x GFLOPs, measured at {reached:.3f}x")
    return share, reached, asked


def _reference_share(measured: float, reference: Path) -> float:
    """The latency share of a model to run as fast as (`--target-latency-of`): refused when it is not faster."""
    if measured >= 1:
        raise ValueError(
            f"'{reference}' runs at {measured:.3f}x the latency of the model to prune: it is not faster, there is "
            "nothing to prune to; give a faster model, or --target-latency with a share; nothing written"
        )
    LOGGER.info(f"{PREFIX} '{reference}' runs at {measured:.3f}x the unpruned model's latency: the target")
    return measured


def latency_target_gflops(
    weights: str | Path,
    *,
    latency: float | Path,
    data: str | Path | None,
    imgsz: int,
    runtime: str = "onnx",
    ranking: Ranking = Ranking(),
) -> float:
    """The `target_gflops` of sparse training that stands for a latency target (a share, or a checkpoint to run as
    fast as): found on the start model with the ranking the sparse stage uses (its trained model is ranked again as
    it trains, so the latency of the final prune lands near, not exactly at, the target)."""
    latency = check_latency(latency)
    Kind(runtime).check()
    model, _ = load_model(check_weights_file(weights))
    imgsz = fit_imgsz(imgsz, model)
    if isinstance(latency, Path):
        _check_reference(latency, model, imgsz)
    importance = make_importance(ranking.importance, Source(model, lambda: resolve_data(data), imgsz, ranking.streams))
    pruner = Pruner(deepcopy(model).float().eval(), ranking, importance)
    return gflops_for_latency(pruner, latency, imgsz, runtime)[0]


def ranking_data(data: str | None, ckpt: dict[str, Any], weights: Path, model: Any) -> str:
    """The dataset whose training images and labels a gradient-based ranking reads: `data`, else the checkpoint's
    own; its classes must be the model's, or the loss indexes classes the head does not have."""
    if not data:
        try:
            data = recorded_data((ckpt.get("train_args") or {}).get("data"), weights)
        except (FileNotFoundError, ValueError) as e:
            needs = "importance by gradients needs the training images, and"
            raise ValueError(f"{needs} {e} (or --importance gamma)") from None
    why = "importance by gradients scores the model's loss on the dataset it was trained on; pass that one as --data"
    check_classes(data, model, weights, f"{why} (or --importance gamma)")
    return data


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
    *,
    data: str | Path | None,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    project: str | Path = PROJECT,
    name: str = "val",
    conf: float | None = None,
) -> dict[str, float]:
    """Validate a checkpoint; print Ultralytics' metrics table and the parameters / GFLOPs line.

    Args:
        weights: the checkpoint.
        data: dataset yaml; None or "demo" for the built-in synthetic set.
        imgsz: rounded up to the model's stride as Ultralytics does (`sizes.fit_imgsz`, with a warning).
        batch, device, project, name: as Ultralytics' `val` takes them.
        conf: the score threshold of the detections scored (None: validation's own, 0.001, which ranks every box;
            0.25 is what `predict` keeps, the operating point a deployed model runs at).

    Returns:
        mAP50, mAP50-95, parameters, GFLOPs (counted at the size validated at) and that size (`imgsz`).

    Example:
        >>> steps.validate("finetune/weights/best.pt", data="data.yaml", imgsz=640)["map50_95"]
    """
    batch = check_batch(batch, autobatch=False)
    source = check_weights_file(weights)
    data = resolve_data(data)
    model = YOLO(source)
    imgsz = fit_imgsz(imgsz, model.model)
    size = ModelSize.of(model.model, imgsz)  # before val, which fuses conv and BN in place
    with removed_unless_started(Path(_project(project)) / name):
        metrics = model.val(
            data=data,
            imgsz=imgsz,
            batch=batch,
            device=device,
            project=_project(project),
            name=name,
            exist_ok=True,
            plots=False,
            **({"conf": conf} if conf is not None else {}),
        )
    print(f"{source}: {size}")
    return {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "params": size.params,
        "gflops": size.gflops,
        "imgsz": imgsz,
    }
