"""One table of every setting: its name, type, default, check, help and the commands that take it.

From the table come:

- `SLIM_ARGS`: the training arguments yoloslim adds to Ultralytics (registered by `trainer.py`), with their defaults;
  `check_value` is the check that `trainer.check_slim_args` runs on each;
- the flags of every `yoloslim` command and root script (`add_flags`; a script passes only what differs);
- the pipeline's config fields (`pipeline_fields`, made into `PipelineConfig`), the Ultralytics arguments the
  pipeline sets itself (`RESERVED`) and the settings that make a run folder's finished stages stale
  (`STAGE_SETTINGS`).

Adding a setting is one `Setting` entry here plus the code that reads it (docs/DESIGN.md has an example).

The value checks live here too, so that every layer (the CLI, the steps, the trainer, the pruner) refuses a bad value
with the same one-line message. The module imports nothing of the package when it loads (every other module may
import it); the choice lists and the importance check read their registries when they are called.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PROJECT = "runs/yoloslim"
BUDGETS = ("gflops", "params")  # what a compute target can count
RUNTIMES = ("onnx", "openvino")  # where --target-latency is measured (latency.py)
FORMATS = ("onnx", "openvino", "torchscript")  # what export writes (deploy.py)
INT8_FORMATS = ("onnx", "openvino")  # the formats with an INT8 kind
KINDS = tuple(f if b == 32 else f"{f}-int8" for f in FORMATS for b in (32, 8) if b == 32 or f in INT8_FORMATS)
IMPORTANCE_NAMES = ("taylor", "gamma", "flops", "sqrt-flops")  # importance.REGISTRY's criteria, checked there
DEFAULT_IMPORTANCE = "taylor"
# One-shot repair after pruning (reconstruct.py), chosen by bench/removal_curve.py: docs/DESIGN.md, "Train-free pruning"
DEFAULT_RECONSTRUCT = True
DEFAULT_RECALIBRATE_BN = False
DEFAULT_CALIB_IMAGES = 256
# How the pipeline reaches a GFLOPs target (pipeline.py): `auto` prunes the normal-trained model once and fine-tunes it
# where that kept up with slimming at equal epochs, and slims below (docs/DESIGN.md, "Which path, by budget")
PATHS = ("auto", "slim", "oneshot")
ONESHOT_FROM = 0.3  # `auto` takes the one-shot path for targets that keep at least this share of the GFLOPs
ONESHOT_SHORT_FROM = 0.5  # one-shot rows from this share up fine-tune --epochs-finetune epochs; below, the slim path's
DEFAULT_STREAMS = False  # prune residual streams? Measured no better on ships (bench/ranking.py)
# The width multiple of the commands, scripts and pipeline (`Pruner`, `steps` and the training arguments keep exact
# counts unless asked): free widths run slowly in onnxruntime on CPU, 16 costs accuracy (docs/DESIGN.md, "Widths").
SCRIPT_ROUND_TO = 8


def read(values: Any, key: str, default: Any = None) -> Any:
    """`values[key]` of a dict, or the attribute `key` of a namespace (such as the training arguments); `default`
    where it holds none. The one reader of settings given either way (the trainer's arguments come as both)."""
    return values.get(key, default) if isinstance(values, dict) else getattr(values, key, default)


def weights_of(name: str) -> str:
    """The best checkpoint of the run `name` under the default project: the paths the steps chain by."""
    return f"{PROJECT}/{name}/weights/best.pt"


# ---- value checks: each returns the value normalised, or raises ValueError saying what to pass -----------------


def as_number(value: Any, what: str) -> float:
    """A real number given as a Python, NumPy or one-element torch scalar; a clear error for anything else."""
    if hasattr(value, "numel") and value.numel() == 1 and not getattr(value, "is_complex", lambda: False)():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} {value!r} is not a number: pass e.g. 0.5")
    return float(value)


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


def check_ratio(ratio: Any) -> float:
    """A prune ratio must be a share of channels in [0, 1); returned as a float."""
    value = as_number(ratio, "prune ratio")
    if not 0 <= value < 1:
        raise ValueError(f"prune ratio {ratio!r} must be in [0, 1): e.g. 0.5 removes half of the prunable channels")
    return value


def check_budget(kind: str, target: Any) -> float:
    """A compute budget: a share in (0, 1] of the unpruned model's GFLOPs or parameters; returned as a float."""
    if kind not in BUDGETS:
        raise ValueError(f"budget kind '{kind}' is not one of {BUDGETS}")
    share = as_number(target, f"target {kind}")
    if not 0 < share <= 1:
        raise ValueError(
            f"target {kind}={target!r} must be in (0, 1]: the share of the unpruned model's {kind} to keep, "
            "e.g. 0.4 keeps 40%"
        )
    return share


def check_latency_target(ratio: Any) -> float:
    """A latency target: the share in (0, 1] of the unpruned model's latency to run at."""
    value = as_number(ratio, "target latency")
    if not 0 < value <= 1:
        raise ValueError(f"target latency {ratio!r} must be in (0, 1]: e.g. 0.5 runs at half the unpruned latency")
    return value


def check_sparsity(value: Any) -> float:
    """A sparsity target: a share of prunable channels in [0, 1) (0 = no target)."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity={value!r} is not a number: pass a share of channels in [0, 1), e.g. 0.5") from None
    if not 0 <= share < 1:
        raise ValueError(f"sparsity={value!r} must be in [0, 1): the share of prunable channels to drive to zero")
    return share


def check_target_gflops(value: Any) -> float:
    """A GFLOPs target for sparsity training: the share of the unpruned model's GFLOPs to keep, 0 = none."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"target_gflops={value!r} is not a number: pass a share in (0, 1], e.g. 0.4") from None
    if not 0 <= share <= 1:
        raise ValueError(
            f"target_gflops={value!r} must be in (0, 1]: the share of the unpruned model's GFLOPs to keep (0 = none)"
        )
    return share


def check_sr(sr: Any) -> float:
    """The L1 penalty: a finite number >= 0 (0 = normal training)."""
    try:
        value = float(sr)
    except (TypeError, ValueError):
        raise ValueError(f"sr={sr!r} is not a number: pass the L1 penalty as a float >= 0, e.g. sr=0.01") from None
    if not 0 <= value < math.inf:
        raise ValueError(f"sr={sr!r} is invalid: the L1 penalty must be a finite number >= 0 (0 = normal training)")
    return value


def check_lr_scale(lr_scale: Any) -> float | None:
    """A factor > 0 on Ultralytics' learning rate, or None: the stage's default (`trainer.stage_lr_scale`)."""
    if lr_scale is None:
        return None
    try:
        scale = float(lr_scale)
    except (TypeError, ValueError):
        raise ValueError(f"lr_scale={lr_scale!r} is not a number: pass a factor > 0, e.g. 0.1") from None
    if isinstance(lr_scale, bool) or not 0 < scale < math.inf:
        raise ValueError(f"lr_scale={lr_scale!r} must be a number > 0 (1 = the learning rate Ultralytics picks)")
    return scale


def check_round_to(round_to: Any) -> int:
    """Channel counts in multiples of this: a whole number >= 1 (1 = exact counts)."""
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or round_to < 1:
        raise ValueError(f"round_to={round_to!r} must be a whole number >= 1 (1 = exact counts)")
    return int(round_to)


def check_min_keep(min_keep: Any) -> float:
    """The per-layer floor: a share of a layer's channels in [0, 1] that pruning keeps (at least one channel)."""
    value = as_number(min_keep, "min_keep")
    if not 0 <= value <= 1:
        raise ValueError(f"min_keep={min_keep!r} must be a share in [0, 1], e.g. 0.05 keeps 5% of each layer")
    return value


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    number = as_number(value, name)
    if not 0 < number < math.inf:
        raise ValueError(f"{name}={value!r} must be a number > 0")
    return number


def check_flag(name: str) -> Callable[[Any], bool]:
    """The check of an on/off setting: True or False, nothing else."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be True or False")
        return value

    return check


def check_importance(name: Any) -> str:
    """A ranking named in `IMPORTANCE_NAMES` (the criteria of `importance.REGISTRY`)."""
    if name not in IMPORTANCE_NAMES:
        raise ValueError(f"importance={name!r} must be one of {sorted(IMPORTANCE_NAMES)}")
    return name


def importance_names() -> list[str]:
    """The ranking names a command offers."""
    return list(IMPORTANCE_NAMES)


def runtime_names() -> list[str]:
    """Where a latency target can be measured."""
    return list(RUNTIMES)


def format_names() -> list[str]:
    """What `export` writes."""
    return list(FORMATS)


def kind_names() -> list[str]:
    """What an artifact can be: a format, and INT8 where it has one (`deploy.Kind`)."""
    return list(KINDS)


def extra_kinds() -> list[str]:
    """The deploy table's kinds besides FP32 ONNX."""
    return [k for k in KINDS if k != "onnx"]


def train_arg(item: str) -> dict[str, Any]:
    """A `KEY=VALUE` Ultralytics training argument, the value read as Ultralytics reads its command line."""
    from ultralytics.cfg import smart_value

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--train-args takes KEY=VALUE items, got '{item}'")
    return {key: smart_value(value)}


# ---- the table --------------------------------------------------------------------------------------------------

TRAINING = ("train", "sparse", "finetune")


NOT_LATER = object()  # a setting that run folders have always recorded


@dataclass(frozen=True)
class Setting:
    """One setting.

    Attributes:
        name: the Python name (the flag is `--name` with dashes).
        kind: how a flag's text is read before the check (int, float, str, bool for an on/off flag).
        default: the default, also the Ultralytics default of a `slim` setting.
        help: what it does, for `--help`.
        commands: the commands (and root scripts) that take it as a flag; "pipeline" also makes it a pipeline field.
        check: normalises a value or raises ValueError (None: any value of `kind`).
        per_command: command -> overrides of `default`, `help` or argparse arguments (`nargs`, `choices`...).
        exclusive: the commands where it is one of a mutually exclusive group of targets.
        slim: a training argument yoloslim registers with Ultralytics (`SLIM_ARGS`).
        stale: a pipeline setting whose change makes finished stages stale (`STAGE_SETTINGS`).
        later: a stale setting added after run folders existed: the value a folder saved without it ran at
            (`LATER_SETTINGS`; `NOT_LATER` for the others).
        item: the kind of each item of a tuple setting.
        field: a pipeline setting is a `PipelineConfig` field (False: a flag the command turns into another field).
        aliases: more flag names.
    """

    name: str
    kind: type
    default: Any
    help: str
    commands: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None
    per_command: dict[str, dict[str, Any]] = field(default_factory=dict)
    exclusive: tuple[str, ...] = ()
    slim: bool = False
    stale: bool = False
    later: Any = NOT_LATER
    item: type = float
    field: bool = True
    aliases: tuple[str, ...] = ()

    def default_for(self, command: str) -> Any:
        """The default of this setting for `command` (a per-command default where the table gives one)."""
        return self.per_command.get(command, {}).get("default", self.default)


def _batch_no_autobatch(value: Any) -> int:
    return check_batch(value, autobatch=False)


def _whole(name: str) -> Callable[[Any], int]:
    return lambda value: check_whole(name, value)


def _share(kind: str) -> Callable[[Any], float]:
    return lambda value: check_budget(kind, value)


def check_reference_name(value: Any) -> str:
    """The name of a model to run as fast as (`--target-latency-of`): a .pt file (whether it is there is checked
    when it is loaded)."""
    if not str(value).endswith(".pt"):
        raise ValueError(
            f"target_latency_of={value!r} is not a .pt file: give the checkpoint of the model to run as fast as"
        )
    return str(value)


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    """A check that `value` is one of `choices` (argparse checks the flag; this checks the Python API too)."""

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
        return value

    return check


SETTINGS: tuple[Setting, ...] = (
    # ---- what to train or read, and where
    Setting(
        "weights",
        str,
        None,
        "a .pt checkpoint, or a model yaml such as yolov8n.yaml",
        ("train", "sparse", "finetune", "gamma", "prune", "val", "export", "pipeline"),
        per_command={
            "train": {"default": "yolov8n.yaml"},
            "sparse": {"default": weights_of("normal")},
            "finetune": {"default": f"{PROJECT}/prune/pruned.pt"},
            "gamma": {
                "default": [weights_of("normal"), weights_of("sparse")],
                "nargs": "+",
                "help": "one or more .pt checkpoints (e.g. before and after sparsity)",
            },
            "prune": {"default": weights_of("sparse"), "help": "sparse-trained .pt checkpoint"},
            "val": {"default": weights_of("finetune"), "help": ".pt checkpoint"},
            "export": {"default": weights_of("finetune"), "help": ".pt checkpoint"},
            "pipeline": {"default": "yolov8n.yaml", "help": "model yaml or .pt to start the normal training from"},
        },
        stale=True,
    ),
    Setting(
        "data",
        str,
        "demo",
        "dataset yaml, or 'demo' for the built-in synthetic set",
        ("train", "sparse", "finetune", "prune", "val", "export", "pipeline"),
        per_command={
            **dict.fromkeys(
                ("prune", "val"),
                {
                    "default": None,
                    "help": "dataset yaml, or 'demo' for the built-in synthetic set (None: the dataset the "
                    "checkpoint was trained on)",
                },
            ),
            "export": {
                "default": None,
                "help": "dataset yaml of --quantize 8 (its train images calibrate, val validates)",
            },
        },
        stale=True,
    ),
    Setting(
        "run_dir",
        str,
        "runs/yoloslim/pipeline",
        "folder for every stage's artefacts (re-run to resume)",
        ("pipeline",),
    ),
    Setting(
        "epochs",
        int,
        30,
        "training epochs",
        TRAINING,
        check=_whole("epochs"),
        per_command={"finetune": {"default": 20}},
    ),
    Setting(
        "imgsz",
        int,
        160,
        "training and validation image size",
        (*TRAINING, "val", "export", "pipeline"),
        check=check_imgsz,
        per_command=dict.fromkeys(
            ("val", "export"), {"default": None, "help": "image size (None: the checkpoint's training imgsz)"}
        ),
        stale=True,
    ),
    Setting(
        "batch",
        int,
        16,
        "batch size (-1: Ultralytics' AutoBatch on a GPU)",
        (*TRAINING, "val", "pipeline"),
        check=check_batch,
        per_command={
            "val": {"check": _batch_no_autobatch, "help": "batch size"},
            "pipeline": {
                "check": _batch_no_autobatch,
                "help": "batch size of every training stage (nbs defaults to it, one optimizer step per batch, except in "
                "normal training from a .pt: stock Ultralytics)",
            },
        },
        stale=True,
    ),
    Setting(
        "epochs_normal",
        int,
        30,  # the demo's normal stage converges (docs/DESIGN.md, "Measured on this machine")
        "epochs of normal training",
        ("pipeline",),
        check=_whole("epochs_normal"),
        stale=True,
    ),
    Setting(
        "epochs_sparse",
        int,
        15,
        "epochs of sparsity training",
        ("pipeline",),
        check=_whole("epochs_sparse"),
        stale=True,
    ),
    Setting(
        "epochs_finetune",
        int,
        5,
        "epochs of fine-tuning for each pruned model",
        ("pipeline",),
        check=_whole("epochs_finetune"),
        stale=True,
    ),
    Setting("device", str, None, "cpu, 0, 0,1 ... (None: Ultralytics picks)", (*TRAINING, "val", "pipeline")),
    Setting("project", str, PROJECT, "folder of the run folders", (*TRAINING, "val")),
    Setting(
        "name",
        str,
        None,
        "run folder name under --project",
        TRAINING,
        per_command={
            "train": {"default": "normal"},
            "sparse": {"default": "sparse"},
            "finetune": {"default": "finetune"},
        },
    ),
    Setting("workers", int, None, "dataloader workers (Ultralytics uses 0 on CPU)", TRAINING),
    # ---- the slimming training arguments (registered with Ultralytics)
    Setting(
        "lr_scale",
        float,
        None,
        "factor on the learning rate Ultralytics picks (None: 0.1 for sparsity training and fine-tuning from a "
        ".pt, which continue a trained model, 1 otherwise; docs/DESIGN.md)",
        TRAINING,
        check=check_lr_scale,
        slim=True,
    ),
    Setting(
        "sr",
        float,
        0.0,
        "L1 penalty on prunable BN gammas per 16 images (0 = none)",
        ("train", "sparse", "pipeline"),
        check=check_sr,
        per_command={"sparse": {"default": 1e-2}, "pipeline": {"default": 1e-2}},
        slim=True,
        stale=True,
    ),
    Setting(
        "sparsity",
        float,
        0.0,
        "share of prunable channels driven to exact zero by the last epoch (0 = plain L1 only); prune at this "
        "ratio afterwards to remove only zeros",
        ("sparse", "pipeline"),
        check=check_sparsity,
        per_command={
            "sparse": {"default": 0.5},
            "pipeline": {
                "default": 0.6,
                "help": "share of prunable channels the sparse stage drives to exact zero (0 = the plain L1 form); "
                "ignored when GFLOPs targets are given",
            },
        },
        exclusive=("sparse",),
        slim=True,
        stale=True,
    ),
    Setting(
        "target_gflops",
        float,
        0.0,
        "instead of --sparsity: zero channels until the live ones keep this share of the GFLOPs; prune with the "
        "same --target-gflops afterwards to remove only zeros",
        ("sparse", "prune"),
        check=check_target_gflops,
        per_command={
            "sparse": {"default": None, "check": _share("gflops")},
            "prune": {
                "default": None,
                "check": _share("gflops"),
                "help": "instead of a ratio: keep this share of the unpruned model's GFLOPs (at its training imgsz)",
            },
        },
        exclusive=("sparse", "prune"),
        slim=True,
    ),
    Setting(
        "target_params",
        float,
        None,
        "instead of a ratio: keep this share of the unpruned model's parameters",
        ("prune",),
        check=_share("params"),
        exclusive=("prune",),
    ),
    Setting(
        "target_latency",
        float,
        None,
        "instead: run at this share of the unpruned model's batch-1 latency on --runtime",
        ("sparse", "prune"),
        check=check_latency_target,
        per_command={
            "sparse": {
                "help": "instead: zero channels down to the GFLOPs share at which the start model, pruned, runs at "
                "this share of its batch-1 latency on --runtime (found by measuring, logged)"
            },
            "prune": {
                "help": "instead: prune to this share of the unpruned model's batch-1 latency on --runtime (each "
                "probe is pruned, exported and timed)"
            },
        },
        exclusive=("sparse", "prune"),
    ),
    Setting(
        "target_latency_of",
        str,
        None,
        "instead: run as fast as this model (a .pt checkpoint, exported and timed beside the unpruned one on "
        "--runtime): prune a YOLOv8s to a yolov8n's latency",
        ("sparse", "prune"),
        check=check_reference_name,
        exclusive=("sparse", "prune"),
    ),
    Setting(
        "runtime",
        str,
        "onnx",
        "where --target-latency and --target-latency-of are measured (CPU)",
        ("sparse", "prune"),
        per_command=dict.fromkeys(("sparse", "prune"), {"choices": runtime_names}),
    ),
    Setting("finetune", bool, False, "train a pruned checkpoint as it is", check=check_flag("finetune"), slim=True),
    # ---- the ranking, shared by the sparse stage's zeroing and pruning
    Setting(
        "importance",
        str,
        DEFAULT_IMPORTANCE,
        "channel ranking: the first-order Taylor change in the loss (taylor, the default; prune reads 8 batches of "
        "the training images), plain |gamma| (gamma), |gamma| per GFLOP the channel costs (flops), or per its "
        "square root",
        ("sparse", "prune", "pipeline"),
        check=check_importance,
        per_command=dict.fromkeys(("sparse", "prune", "pipeline"), {"choices": importance_names}),
        slim=True,
        stale=True,
    ),
    Setting(
        "streams",
        bool,
        DEFAULT_STREAMS,
        "also prune the residual streams of Bottleneck shortcuts (each as one unit in all its BNs)",
        ("sparse", "prune", "pipeline"),
        check=check_flag("streams"),
        slim=True,
        stale=True,
    ),
    Setting(
        "round_to",
        int,
        1,  # the Python API keeps exact counts; every command rounds
        "keep channel counts in multiples of N (1 = exact counts, which ran slowly in onnxruntime on CPU; "
        "docs/RESULTS.md); give sparse training and pruning the same N",
        ("sparse", "prune", "pipeline"),
        check=check_round_to,
        per_command=dict.fromkeys(("sparse", "prune", "pipeline"), {"default": SCRIPT_ROUND_TO}),
        slim=True,
        stale=True,
    ),
    # ---- fine-tuning's teacher
    Setting(
        "teacher",
        str,
        None,
        "learn from this model as well as from the labels (Ultralytics' knowledge distillation); give the "
        "normal-trained best.pt",
        ("finetune",),
    ),
    Setting(
        "distill_weight",
        float,
        None,
        "weight of the distillation loss (Ultralytics' `dis`; None: Ultralytics' 6)",
        ("finetune",),
        check=lambda value: check_positive("distill_weight", value),
    ),
    Setting(
        "distill",
        bool,
        False,
        "fine-tune every pruned model with the normal-trained model as its teacher (Ultralytics' knowledge "
        "distillation, about 1.5x the fine-tuning time; at weight 1 no gain on hardhat, docs/RESULTS.md)",
        ("pipeline",),
        per_command={"pipeline": {"action": argparse.BooleanOptionalAction}},
        stale=True,
        later=False,
    ),
    # ---- gamma histograms
    Setting(
        "labels",
        str,
        None,
        "one label per checkpoint (None: run folder names)",
        ("gamma",),
        per_command={"gamma": {"nargs": "+"}},
    ),
    Setting(
        "out",
        str,
        f"{PROJECT}/gamma/gamma_hist.png",
        "PNG file to write (a .txt summary is written beside it)",
        ("gamma",),
    ),
    Setting("side_by_side", bool, False, "one panel per checkpoint instead of overlaid", ("gamma",)),
    # ---- how much to prune
    Setting(
        "prune_ratio",
        float,
        0.5,
        "share of prunable channels to remove, in [0, 1)",
        ("gamma", "prune"),
        check=check_ratio,
        per_command={"gamma": {"help": "draw the gamma threshold that this prune ratio gives the last checkpoint"}},
        exclusive=("prune",),
    ),
    Setting("save_dir", str, f"{PROJECT}/prune", "folder for pruned.pt and the per-layer report", ("prune",)),
    Setting(
        "min_keep",
        float,
        0.05,
        "per-layer floor, as a share of its channels",
        ("prune",),
        check=check_min_keep,
    ),
    Setting("no_fold", bool, False, "do not fold removed channels' act(beta) into consumers", ("prune",)),
    Setting("no_val", bool, False, "skip validating the pruned model on --data", ("prune",)),
    Setting(
        "reconstruct",
        bool,
        DEFAULT_RECONSTRUCT,
        "re-fit the convs after the cut by least squares on --data's training images (no labels read; on whenever "
        "--data is there: without it a cut's scores can fall below predict's 0.25 threshold); --no-reconstruct: the "
        "cut and fold alone",
        ("prune",),
        per_command={"prune": {"action": argparse.BooleanOptionalAction}},
    ),
    Setting(
        "recalibrate_bn",
        bool,
        DEFAULT_RECALIBRATE_BN,
        "re-estimate every BN's statistics through the pruned model on the calibration images (after reconstruction)",
        ("prune",),
    ),
    Setting(
        "calib_images",
        int,
        DEFAULT_CALIB_IMAGES,
        "training images of --data that calibrate the repair (the first ones, in file order)",
        ("prune",),
        check=lambda n: check_whole("calib_images", n),
    ),
    Setting(
        "allow_unchanged",
        bool,
        False,
        "save the model even when floors and rounding leave every layer whole (else an error)",
        ("prune",),
    ),
    Setting(
        "export",
        tuple,
        (),
        "then export pruned.pt to these kinds and check each artifact (INT8 is calibrated on --data's training images "
        "and validated on its val images): the pruned, deployable model in one command",
        ("prune",),
        per_command={"prune": {"nargs": "+", "choices": kind_names}},
        item=str,
    ),
    Setting(
        "model_size", str, None, "accepted for compatibility with the reference; ignored (read from model)", ("prune",)
    ),
    Setting("cfg", str, None, "accepted for compatibility with the reference; ignored (read from model)", ("prune",)),
    # ---- export
    Setting("format", str, "onnx", "what to export to", ("export",), per_command={"export": {"choices": format_names}}),
    Setting(
        "quantize",
        int,
        None,
        "INT8, calibrated on the training images of --data and validated on it: onnx (onnxruntime, uint8 "
        "activations, 7-bit per-channel weights, the box decode float) or openvino (NNCF); "
        "which runs faster on a CPU: docs/RESULTS.md \"Deployment\"",
        ("export",),
        per_command={"export": {"choices": [8]}},
    ),
    # ---- the pipeline's rows, comparisons and tables
    Setting(
        "ratios",
        tuple,
        (0.2, 0.4, 0.6, 0.8),
        "prune ratios besides 0",
        ("pipeline",),
        check=check_ratio,
        per_command={"pipeline": {"nargs": "+"}},
        exclusive=("pipeline",),
    ),
    Setting(
        "targets",
        tuple,
        (),
        "instead of ratios: GFLOPs shares to prune to; each row that slims (--path) gets its own sparse stage that "
        "zeroes channels down to it (one number drives both stages) and --sparsity is not used",
        ("pipeline",),
        check=_share("gflops"),
        per_command={"pipeline": {"nargs": "+"}},
        exclusive=("pipeline",),
        stale=True,
    ),
    Setting(
        "one_sparse_stage",
        bool,
        False,
        "with --targets: one sparse stage, zeroing to the smallest target, serves every row (cheaper, less "
        "accurate: 3 pt lower at 0.40x on hardhat, docs/RESULTS.md)",
        ("pipeline",),
        stale=True,
    ),
    Setting(
        "path",
        str,
        "auto",
        "how each --targets row reaches its budget: slim (a sparse stage, prune its zeros, fine-tune), oneshot "
        "(prune the normal-trained model, repair it from the training images, fine-tune: no sparse stage; "
        f"--epochs-finetune epochs for targets of {ONESHOT_SHORT_FROM:g} and up, --epochs-sparse + --epochs-finetune "
        f"below), or auto (oneshot for targets of at least {ONESHOT_FROM:g} of the GFLOPs, slim below, and slim for "
        "ratios, which say nothing about compute)",
        ("pipeline",),
        check=_choice("path", PATHS),
        per_command={"pipeline": {"choices": PATHS}},
        stale=True,
        later="slim",
    ),
    Setting(
        "compare_at",
        float,
        0.6,
        "the ratio (or target) of the comparisons: the normal-trained model pruned instead of the sparse one, and "
        "folding off (on a one-shot row: the row without its repair) (--no-compare skips them)",
        ("pipeline",),
        aliases=("--compare-ratio",),
    ),
    Setting("no_compare", bool, False, "skip the two comparisons (compare_at None)", ("pipeline",), field=False),
    Setting(
        "latency_repeats",
        int,
        30,
        "onnxruntime runs per model for the latency column",
        ("pipeline",),
        check=_whole("latency_repeats"),
    ),
    Setting(
        "deploy",
        tuple,
        (),
        "also a deploy table: every row's model in these kinds besides FP32 ONNX (size, latency, the artifact's own "
        "mAP50-95; INT8 calibrated on the training images)",
        ("pipeline",),
        per_command={"pipeline": {"nargs": "+", "choices": extra_kinds}},
        item=str,
    ),
    Setting(
        "train_args",
        dict,
        {},
        "extra Ultralytics train arguments for every training stage, e.g. nbs=16 optimizer=SGD (nbs defaults to "
        "--batch: no gradient accumulation, so a small dataset gets more optimizer steps, and L1 steps, per epoch; "
        "normal training from a .pt keeps Ultralytics' own)",
        ("pipeline",),
        check=train_arg,
        per_command={"pipeline": {"nargs": "*", "metavar": "KEY=VALUE"}},
        stale=True,
    ),
)

SLIM_ARGS: dict[str, Any] = {s.name: s.default for s in SETTINGS if s.slim}
RANKING = ("importance", "streams", "round_to")  # the ranking's training arguments: the zeroing ranks as prune will
RANKING_FIELDS = (*RANKING, "min_keep")  # `Ranking`'s fields
STAGE_SETTINGS: tuple[str, ...] = tuple(s.name for s in SETTINGS if s.stale)
LATER_SETTINGS: dict[str, Any] = {s.name: s.later for s in SETTINGS if s.later is not NOT_LATER}
# Ultralytics' own arguments that the pipeline's stages set, besides its settings that Ultralytics takes
RESERVED = frozenset(
    {"model", "data", "epochs", "imgsz", "batch", "device", "project", "name", "exist_ok", "resume", "distill_model"}
    | set(SLIM_ARGS) - {"lr_scale"}  # the pipeline leaves the learning rate to the user's train_args
)
_BY_NAME = {s.name: s for s in SETTINGS}


def check_value(name: str, value: Any) -> Any:
    """`value` of the setting `name`, checked and normalised by its check."""
    check = _BY_NAME[name].check
    return value if check is None else check(value)


@dataclass(frozen=True)
class Ranking:
    """How channels are ranked and how many each layer keeps: made once where a command or the Python API starts,
    checked then by the table's checks, and passed down as it is (the sparse stage's zeroing ranks as `prune` will).

    Attributes:
        importance: a criterion of `IMPORTANCE_NAMES` (made by `importance.make_importance`).
        streams: also prune the residual streams of Bottleneck shortcuts.
        round_to: keep channel counts in multiples of this (1 = exact counts).
        min_keep: the per-layer floor, a share of each layer's channels (at least one is kept).

    Example:
        >>> Ranking(importance="gamma", round_to=8)
    """

    importance: str = _BY_NAME["importance"].default
    streams: bool = _BY_NAME["streams"].default
    round_to: int = _BY_NAME["round_to"].default
    min_keep: float = _BY_NAME["min_keep"].default

    def __post_init__(self) -> None:
        for name in RANKING_FIELDS:
            object.__setattr__(self, name, check_value(name, getattr(self, name)))

    @classmethod
    def of(cls, values: Any) -> Ranking:
        """The ranking among `values` (a dict, or a namespace such as the training arguments); the fields it does
        not hold keep the table's defaults (a field it holds as None is refused by its check)."""
        missing = object()
        held = {k: read(values, k, missing) for k in RANKING_FIELDS}
        return cls(**{k: v for k, v in held.items() if v is not missing})


@dataclass(frozen=True)
class SparsityTarget:
    """What the sparse stage zeroes (`target.ChannelZeroing`), checked once when made.

    Attributes:
        kind: "channels" (a share of prunable channels driven to zero) or a compute kind of `BUDGETS` (the share of
            the unpruned model's cost that the channels left alive keep).
        value: that share.
    """

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind == "channels":
            object.__setattr__(self, "value", check_sparsity(self.value))
        else:
            object.__setattr__(self, "value", check_budget(self.kind, self.value))

    @property
    def final(self) -> float:
        """What the zeroing removes in the end: a share of the channels, or of the cost."""
        return self.value if self.kind == "channels" else 1 - self.value

    @classmethod
    def of(cls, values: Any) -> SparsityTarget | None:
        """The target among training arguments (`target_gflops` first, else `sparsity`), or None for neither."""
        if gflops := read(values, "target_gflops"):
            return cls("gflops", gflops)
        return cls("channels", sparsity) if (sparsity := read(values, "sparsity")) else None


def check_values(command: str, values: Any) -> None:
    """Check (and normalise in place) every attribute of `values` that is a setting of `command`, by the check that
    command's flag uses; a tuple is checked item by item, and an item given twice is refused (it would make the same
    row or artifact twice)."""
    for s in SETTINGS:
        check = s.per_command.get(command, {}).get("check", s.check)
        if command not in s.commands or s.kind is dict or (value := getattr(values, s.name, None)) is None:
            continue
        if check is not None:
            setattr(values, s.name, tuple(map(check, value)) if s.kind is tuple else check(value))
        if s.kind is not tuple:
            continue
        named = [f"{v:g}" if isinstance(v, float) else str(v) for v in getattr(values, s.name)]
        if len(set(named)) < len(named):  # by the name its row and run folder get
            twice = sorted({v for v in named if named.count(v) > 1})
            raise ValueError(f"--{s.name} gives {', '.join(twice)} more than once: give each once")


def pipeline_fields() -> list[tuple[str, type, Any]]:
    """(name, type, dataclasses.field) of every pipeline setting, in table order, with the pipeline's defaults."""
    fields = []
    for s in SETTINGS:
        if "pipeline" in s.commands and s.field:
            default = s.default_for("pipeline")
            made = (
                field(default_factory=lambda d=default: type(d)(d))
                if isinstance(default, dict)
                else field(default=default)
            )
            fields.append((s.name, s.kind | None if default is None else s.kind, made))
    return fields


def _flag_type(s: Setting, flag: str, check: Callable[[Any], Any] | None) -> Callable[[str], Any]:
    """The argparse type of a flag: the text read as the setting's kind (a tuple's: its item's), then its check; the
    check's own message (also for text that is not of the kind) as argparse's error. A dict setting's check reads
    the text itself (`KEY=VALUE`)."""
    read = s.item if s.kind is tuple else s.kind

    def parse(text: str) -> Any:
        try:
            if s.kind is dict:
                return check(text)
            try:
                value = read(text)
            except ValueError:
                value = text  # the check says what it wants
                if check is None or check(text) is not None:
                    word = "a whole number" if read is int else "a number"
                    raise ValueError(f"{flag} {text!r} must be {word}") from None
            return value if check is None else check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add a flag to `parser` for every setting that `command` takes, in table order; the targets that exclude
    each other go into one mutually exclusive group."""
    group = None
    for s in SETTINGS:
        if command not in s.commands:
            continue
        extra = dict(s.per_command.get(command, {}))
        check = extra.pop("check", s.check)
        default = extra.pop("default", s.default)
        flags = [f"--{s.name.replace('_', '-')}", *s.aliases]
        kwargs: dict[str, Any] = {"default": default, "help": extra.pop("help", s.help), "dest": s.name}
        if callable(extra.get("choices")):
            extra["choices"] = extra["choices"]()
        if s.kind is bool and "action" not in extra:
            kwargs["action"] = "store_true"
        elif "action" not in extra:
            kwargs["type"] = _flag_type(s, flags[0], check)
        kwargs.update(extra)
        if isinstance(default, (tuple, list, dict)):  # a fresh copy: argparse hands the default object out as is
            kwargs["default"] = list(default) if isinstance(default, tuple) else type(default)(default)
        target = parser
        if command in s.exclusive:
            group = group or parser.add_mutually_exclusive_group()
            target = group
        target.add_argument(*flags, **kwargs)


def flag_names(command: str) -> Sequence[str]:
    """The settings `command` takes, in table order."""
    return [s.name for s in SETTINGS if command in s.commands]
