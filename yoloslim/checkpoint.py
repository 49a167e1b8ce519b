"""Reading and writing Ultralytics checkpoints, and the marker that says a model was pruned.

A pruned checkpoint is a normal Ultralytics checkpoint: the pickled model uses only Ultralytics' own
module classes with fewer channels, so stock `ultralytics.YOLO("pruned.pt")` predicts, validates and
exports it. `model.yaml["pruned"]` records that it was pruned (ratio, source, threshold); the yaml's
layer list still describes the full-width network, which is why training must reuse the model object.
"""

from __future__ import annotations

import io
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml as yaml_lib
from torch import nn
from ultralytics import __version__ as ultralytics_version
from ultralytics.nn.tasks import guess_model_task, load_checkpoint

from yoloslim.atomic import atomic_write_bytes
from yoloslim.settings import SLIM_ARGS

PRUNED_KEY = "pruned"


def pruned_info(model: nn.Module) -> dict[str, Any] | None:
    """The pruning record of `model` (None for a model that was never pruned)."""
    yaml = getattr(model, "yaml", None)
    return yaml.get(PRUNED_KEY) if isinstance(yaml, dict) else None


# What stock Ultralytics reads as the model scale when it rebuilds a model from its yaml (training, resume):
# no scale has this name, so the rebuild stops with a KeyError that says what to do instead of silently
# training the full-width network with only the weights that happen to fit.
STOCK_REBUILD_GUARD = "pruned by yoloslim: a rebuild from this yaml drops the pruning; train it with yoloslim.YOLO"


def mark_pruned(model: nn.Module, info: dict[str, Any]) -> None:
    """Record in `model.yaml` that the model was pruned; a pruned model pruned again keeps its history.

    The yaml's `scale` becomes `STOCK_REBUILD_GUARD` (the original is kept in the record), so stock
    Ultralytics fails loudly where it would rebuild the full-width network; predict, val and export never
    read it. yoloslim trains a pruned model object as it is.
    """
    old = pruned_info(model) or {}
    history = old.get("history", [])
    previous = {k: v for k, v in old.items() if k != "history"}
    scale = old.get("scale", model.yaml.get("scale"))
    scales = model.yaml.get("scales") or {
        "unpruned": [model.yaml.get("depth_multiple", 1.0), model.yaml.get("width_multiple", 1.0), 1024]
    }
    record = {**info, "scale": scale, "history": [*history, previous] if previous else history}
    model.yaml = {**model.yaml, "scale": STOCK_REBUILD_GUARD, "scales": scales, PRUNED_KEY: record}


def check_weights_file(path: str | Path) -> Path:
    """`path` as a Path if it is an existing .pt file; otherwise a one-line error that says what to pass."""
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"weights '{path}' is not a .pt checkpoint: pass a .pt file saved by Ultralytics or yoloslim")
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' not found: check the path (train first, or pass --weights)")
    return path


def student(model: nn.Module) -> nn.Module:
    """The trained model inside Ultralytics' distillation wrapper (`DistillationModel.student_model`), else `model`.

    A distillation run wraps the model while it trains, and its checkpoints hold the wrapper until the run ends
    (Ultralytics then keeps only the student); the loader's attributes (args, task, path) move to the student.
    """
    inner = getattr(model, "student_model", None)
    if inner is None:
        return model
    for key in ("args", "pt_path", "task"):
        if hasattr(model, key):
            setattr(inner, key, getattr(model, key))
    return inner


def load_model(path: str | Path, finite: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Load an Ultralytics checkpoint's model (FP32, eval mode) and the checkpoint dict, with clear errors; a
    checkpoint saved during a distillation run gives its student.

    Args:
        path: the .pt file.
        finite: refuse a model with a NaN or infinite weight or BN statistic (a diverged training), which would
            otherwise be ranked, pruned, repaired and exported as if it were sound; False only to read its state.

    Returns:
        The model and the checkpoint dict.
    """
    path = check_weights_file(path)
    try:
        model, ckpt = load_checkpoint(path)
    except Exception as e:  # torch / pickle raise many types for a file that is not a checkpoint
        raise ValueError(f"'{path}' is not a readable Ultralytics checkpoint ({type(e).__name__}: {e})") from e
    model = student(model)
    yaml = getattr(model, "yaml", None)
    if isinstance(yaml, dict) and "ch" in yaml and "channels" not in yaml:  # checkpoints older than 8.3
        model.yaml = {**yaml, "channels": yaml["ch"]}
    tensors = (*model.named_parameters(), *model.named_buffers())
    if finite and (bad := [n for n, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]):
        raise ValueError(
            f"'{path}' has NaN or infinite values ({', '.join(bad[:2])}{', ...' if len(bad) > 2 else ''}): its "
            "training diverged; use an earlier checkpoint of that run (or train it again with a lower learning rate)"
        )
    return model, ckpt


# Training arguments Ultralytics saves in a checkpoint as args.yaml has them (imgsz it rounds, epochs `time=` resets,
# after writing args.yaml): a difference in one means another run
RUN_KEYS = ("data", "seed", *SLIM_ARGS)


def earlier_run(path: str | Path, ckpt: dict[str, Any]) -> str | None:
    """Why the checkpoint at `path`, in a run's `weights/` folder, was saved by an earlier run than the one whose
    `args.yaml` is beside that folder, or None. Ultralytics reuses a run folder (`exist_ok`), and a new run that
    stops before it saves a best.pt leaves the earlier run's best.pt beside its own args.yaml and last.pt."""
    path = Path(path)
    args_file = path.parent.parent / "args.yaml"
    saved = ckpt.get("train_args") or {}
    if path.parent.name != "weights" or not args_file.is_file() or not saved:
        return None
    try:
        now = yaml_lib.safe_load(args_file.read_text()) or {}
    except (OSError, yaml_lib.YAMLError):
        return None
    differ = [
        f"{k} {saved[k]!r} there, {now[k]!r} in args.yaml"
        for k in RUN_KEYS
        if k in saved and k in now and saved[k] != now[k]  # a key only one of them has is no difference
    ]
    return "; ".join(differ) or None


def readable(path: str | Path) -> bool:
    """Whether `path` is a checkpoint that loads (False for a missing, truncated or foreign file)."""
    try:
        load_model(path, finite=False)
    except (FileNotFoundError, ValueError):
        return False
    return True


def finished_training(last: str | Path) -> bool:
    """Whether the run that wrote `last` (its last.pt) ended: Ultralytics strips it to epoch -1 at the end."""
    last = Path(last)
    return last.is_file() and load_model(last, finite=False)[1].get("epoch", -1) == -1


def save_checkpoint(model: nn.Module, path: str | Path, train_args: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Write `model` as an Ultralytics checkpoint (FP16, like Ultralytics' own), atomically.

    The bytes go to a temporary file in the target folder that is flushed to disk and renamed over
    `path` only when complete, so an interrupted save never leaves a truncated checkpoint behind.
    """
    return atomic_write_bytes(path, checkpoint_bytes(model, train_args, **extra))


def checkpoint_bytes(model: nn.Module, train_args: dict[str, Any] | None = None, **extra: Any) -> bytes:
    """`model` as the bytes of an Ultralytics checkpoint (FP16 EMA, epoch -1: a finished run)."""
    ckpt = {
        "epoch": -1,
        "best_fitness": None,
        "model": None,
        "ema": _half_copy(model),
        "updates": None,
        "optimizer": None,
        "train_args": {"task": guess_model_task(model), **(train_args or {})},  # stock loaders read the task here
        "date": datetime.now().astimezone().isoformat(),
        "version": ultralytics_version,
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    return buffer.getvalue()


def _half_copy(model: nn.Module) -> nn.Module:
    """An FP16 copy of `model` for saving, leaving the caller's model untouched."""
    copy = deepcopy(model).half()
    for p in copy.parameters():
        p.requires_grad_(False)
    return copy
