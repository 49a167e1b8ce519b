"""The `yoloslim` command and the argument parsers the root scripts share.

`yoloslim train|sparse|gamma|prune|finetune|val|export|pipeline`. Each root script is
`run(parser_for("<step>", **its_editable_defaults).parse_args())`, so a script and its subcommand take
the same flags. The default paths chain: each step reads what the previous one wrote under
`runs/yoloslim/`, so the scripts run in sequence out of the box on the built-in demo data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROJECT = "runs/yoloslim"


def weights_of(name: str) -> str:
    """The best checkpoint of the run `name` under the default project."""
    return f"{PROJECT}/{name}/weights/best.pt"


# Defaults per step: small enough to run on the demo data on a CPU in minutes. Scripts override them.
DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"weights": "yolov8n.yaml", "name": "normal", "epochs": 30, "sr": 0.0},
    "sparse": {"weights": weights_of("normal"), "name": "sparse", "epochs": 30, "sr": 1e-2, "sparsity": 0.5},
    "gamma": {
        "weights": [weights_of("normal"), weights_of("sparse")],
        "out": f"{PROJECT}/gamma/gamma_hist.png",
        "prune_ratio": 0.5,
    },
    "prune": {"weights": weights_of("sparse"), "save_dir": f"{PROJECT}/prune", "prune_ratio": 0.5},
    "finetune": {"weights": f"{PROJECT}/prune/pruned.pt", "name": "finetune", "epochs": 20},
    "val": {"weights": weights_of("finetune")},
    "export": {"weights": weights_of("finetune")},
}


def _add_data(p: argparse.ArgumentParser, default: str | None = "demo") -> None:
    more = " (default: the dataset the checkpoint was trained on)" if default is None else ""
    p.add_argument("--data", default=default, help=f"dataset yaml, or 'demo' for the built-in synthetic set{more}")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a .pt checkpoint, or a model yaml such as yolov8n.yaml")
    _add_data(p)
    p.add_argument("--epochs", type=_whole("epochs"))
    p.add_argument("--imgsz", type=_whole("imgsz"), default=160)
    p.add_argument("--batch", type=_whole("batch", autobatch=True), default=16)
    p.add_argument("--device", default=None, help="cpu, 0, 0,1 ... (default: Ultralytics picks)")
    p.add_argument("--project", default=PROJECT)
    p.add_argument("--name")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (Ultralytics uses 0 on CPU)")
    p.add_argument(
        "--lr-scale",
        type=_slim_arg("lr_scale"),
        help="factor on the learning rate Ultralytics picks (default: 0.1 for sparsity training and fine-tuning "
        "from a .pt, which continue a trained model, 1 otherwise; docs/DESIGN.md)",
    )


def _add_teacher(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        help="learn from this model as well as from the labels (Ultralytics' knowledge distillation); give the "
        "normal-trained best.pt (default: none)",
    )
    p.add_argument(
        "--distill-weight",
        type=_positive("--distill-weight"),
        help="weight of the distillation loss (Ultralytics' `dis`; default: Ultralytics' 6)",
    )


def _slim_arg(key: str) -> Callable[[str], float]:
    """argparse type for a numeric training argument of `SLIM_ARGS` (sr, lr_scale): the trainer's own check."""

    def parse(value: str) -> float:
        from yoloslim.trainer import check_slim_args

        args = {key: value}
        try:
            check_slim_args(args)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return args[key]

    return parse


def _sparsity(value: str) -> float:
    """argparse type for --sparsity: the trainer's own check, reported by argparse."""
    from yoloslim.target import check_sparsity

    try:
        return check_sparsity(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ratio(value: str) -> float:
    """argparse type for --prune-ratio: the pruner's own check, reported by argparse."""
    from yoloslim.prune import check_ratio

    try:
        ratio = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a number: pass e.g. 0.5") from None
    try:
        check_ratio(ratio)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return ratio


def _share(flag: str) -> Callable[[str], float]:
    """argparse type for a target share in (0, 1], checked by the pruner's own check."""
    from yoloslim.prune import check_budget

    def parse(value: str) -> float:
        try:
            share = float(value)
            check_budget("params" if "params" in flag else "gflops", share)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {value!r} must be a number in (0, 1]: the share of the unpruned model's cost to keep, e.g. 0.4"
            ) from None
        return share

    return parse


def _positive(flag: str) -> Callable[[str], float]:
    """argparse type for a finite number > 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} {text!r} must be a number > 0")
        return value

    return parse


def _whole(key: str, autobatch: bool = False) -> Callable[[str], int]:
    """argparse type for --imgsz / --batch / --epochs: the steps' own check (`sizes.py`), reported by argparse."""

    def parse(text: str) -> int:
        from yoloslim.sizes import check_batch, check_whole

        try:
            value = int(text)
            return check_batch(value, autobatch) if key == "batch" else check_whole(key, value)
        except ValueError:
            rule = "a whole number > 0" + (" (or -1: AutoBatch)" if autobatch else "")
            raise argparse.ArgumentTypeError(f"--{key} {text!r} must be {rule}") from None

    return parse


def _round_to(text: str) -> int:
    """argparse type of --round-to: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--round-to {text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--round-to {value} must be >= 1 (1 = no rounding)")
    return value


def _latency(value: str) -> float:
    """argparse type for --target-latency: the search's own check, reported by argparse."""
    from yoloslim.latency import check_latency_target

    try:
        return check_latency_target(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--target-latency {value!r} must be a number in (0, 1]: the share of the unpruned model's latency, e.g. 0.5"
        ) from None


def _add_latency_target(group: Any, p: argparse.ArgumentParser, how: str) -> None:
    """--target-latency (in the group of exclusive targets) and the --runtime it is measured on."""
    from yoloslim.latency import RUNTIMES

    group.add_argument(
        "--target-latency",
        type=_latency,
        help=f"instead: run at this share of the unpruned model's batch-1 latency on --runtime ({how})",
    )
    p.add_argument("--runtime", choices=RUNTIMES, default="onnx", help="where --target-latency is measured (CPU)")


def _add_ranking(p: argparse.ArgumentParser) -> None:
    """The pruner's ranking flags, shared by sparse training (its zeroing) and pruning: use the same for both."""
    from yoloslim.prune import DEFAULT_IMPORTANCE, IMPORTANCE, SCRIPT_ROUND_TO

    p.add_argument(
        "--importance",
        choices=list(IMPORTANCE),
        default=DEFAULT_IMPORTANCE,
        help="channel ranking: the first-order Taylor change in the loss (taylor, the default; prune reads 8 "
        "batches of the training images), plain |gamma| (gamma), |gamma| per GFLOP the channel costs (flops), or "
        "per its square root",
    )
    p.add_argument(
        "--streams",
        action="store_true",
        help="also prune the residual streams of Bottleneck shortcuts (each as one unit in all its BNs)",
    )
    p.add_argument(
        "--round-to",
        type=_round_to,
        default=SCRIPT_ROUND_TO,
        help="keep channel counts in multiples of N (1 = exact counts, which ran slowly in onnxruntime on CPU; "
        "docs/RESULTS.md); give sparse training and pruning the same N",
    )


def _configure(command: str, p: argparse.ArgumentParser) -> None:
    """Add the flags of `command` to `p`."""
    if command in {"train", "sparse", "finetune"}:
        _add_train_args(p)
        if command != "finetune":
            p.add_argument(
                "--sr", type=_slim_arg("sr"), help="L1 penalty on prunable BN gammas per 16 images (0 = none)"
            )
        else:
            _add_teacher(p)
        if command == "sparse":
            target = p.add_mutually_exclusive_group()
            target.add_argument(
                "--sparsity",
                type=_sparsity,
                help="share of prunable channels driven to exact zero by the last epoch (0 = plain L1 only); "
                "prune at this ratio afterwards to remove only zeros",
            )
            target.add_argument(
                "--target-gflops",
                type=_share("--target-gflops"),
                help="instead of --sparsity: zero channels until the live ones keep this share of the GFLOPs; "
                "prune with the same --target-gflops afterwards to remove only zeros",
            )
            _add_latency_target(target, p, "the GFLOPs share found on the start model is the sparse target (logged)")
            _add_ranking(p)
    elif command == "gamma":
        p.add_argument("--weights", nargs="+", help="one or more .pt checkpoints (e.g. before and after sparsity)")
        p.add_argument("--labels", nargs="+", help="one label per checkpoint (default: run folder names)")
        p.add_argument("--out", help="PNG file to write (a .txt summary is written beside it)")
        p.add_argument("--side-by-side", action="store_true", help="one panel per checkpoint instead of overlaid")
        p.add_argument(
            "--prune-ratio",
            type=_ratio,
            help="draw the gamma threshold that this prune ratio gives the last checkpoint",
        )
    elif command == "prune":
        p.add_argument("--weights", help="sparse-trained .pt checkpoint")
        _add_data(p, default=None)
        amount = p.add_mutually_exclusive_group()
        amount.add_argument("--prune-ratio", type=_ratio, help="share of prunable channels to remove, in [0, 1)")
        amount.add_argument(
            "--target-gflops",
            type=_share("--target-gflops"),
            help="instead of a ratio: keep this share of the unpruned model's GFLOPs (at its training imgsz)",
        )
        amount.add_argument(
            "--target-params",
            type=_share("--target-params"),
            help="instead of a ratio: keep this share of the unpruned model's parameters",
        )
        _add_latency_target(amount, p, "measured: each probe is pruned, exported and timed")
        _add_ranking(p)
        p.add_argument("--save-dir", help="folder for pruned.pt and the per-layer report")
        p.add_argument("--min-keep", type=float, default=0.05, help="per-layer floor, as a share of its channels")
        p.add_argument("--no-fold", action="store_true", help="do not fold removed channels' act(beta) into consumers")
        p.add_argument("--no-val", action="store_true", help="skip validating the pruned model on --data")
        p.add_argument(
            "--allow-unchanged",
            action="store_true",
            help="save the model even when floors and rounding leave every layer whole (else an error)",
        )
        p.add_argument("--model-size", help="accepted for compatibility with the reference; ignored (read from model)")
        p.add_argument("--cfg", help="accepted for compatibility with the reference; ignored (read from model)")
    elif command in {"val", "export"}:
        p.add_argument("--weights", help=".pt checkpoint")
        p.add_argument("--imgsz", type=_whole("imgsz"), default=None, help="default: the checkpoint's training imgsz")
        if command == "val":
            _add_data(p, default=None)
            p.add_argument("--batch", type=_whole("batch"), default=16)
            p.add_argument("--device", default=None)
            p.add_argument("--project", default=PROJECT)
        else:
            from yoloslim.deploy import FORMATS

            p.add_argument("--format", choices=FORMATS, default="onnx", help="what to export to")
            p.add_argument(
                "--quantize",
                type=int,
                choices=[8],
                help="INT8 (onnx, openvino), calibrated on the training images of --data and validated on it",
            )
            p.add_argument("--data", help="dataset yaml of --quantize 8 (its train images calibrate, val validates)")
    elif command == "pipeline":
        from yoloslim.deploy import KINDS
        from yoloslim.pipeline import PipelineConfig

        d = PipelineConfig()
        _add_data(p)
        p.add_argument("--weights", default=d.weights, help="model yaml or .pt to start the normal training from")
        p.add_argument("--run-dir", default=d.run_dir, help="folder for every stage's artefacts (re-run to resume)")
        for flag, text in (
            ("imgsz", "training and validation image size"),
            ("batch", "batch size of every training stage (nbs defaults to it: one optimizer step per batch)"),
            ("epochs_normal", "epochs of normal training"),
            ("epochs_sparse", "epochs of sparsity training"),
            ("epochs_finetune", "epochs of fine-tuning for each pruned model"),
            ("latency_repeats", "onnxruntime runs per model for the latency column"),
        ):
            kind = _whole(flag) if flag in ("imgsz", "batch") else int
            p.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=getattr(d, flag), help=text)
        p.add_argument("--device", default=None, help="cpu, 0, 0,1 ... (Ultralytics picks when unset)")
        p.add_argument(
            "--sr", type=_slim_arg("sr"), default=d.sr, help="L1 penalty on prunable BN gammas per 16 images"
        )
        p.add_argument(
            "--sparsity",
            type=_sparsity,
            default=d.sparsity,
            help="share of prunable channels the sparse stage drives to exact zero (0 = the plain L1 form)",
        )
        points = p.add_mutually_exclusive_group()
        points.add_argument("--ratios", type=_ratio, nargs="+", default=list(d.ratios), help="prune ratios besides 0")
        points.add_argument(
            "--targets",
            type=_share("--targets"),
            nargs="+",
            default=[],
            help="instead of ratios: GFLOPs shares to prune to; each gets its own sparse stage that zeroes channels "
            "down to it (one number drives both stages) and --sparsity is not used",
        )
        p.add_argument(
            "--one-sparse-stage",
            action="store_true",
            help="with --targets: one sparse stage, zeroing to the smallest target, serves every row (cheaper)",
        )
        p.add_argument(
            "--compare-at",
            "--compare-ratio",
            dest="compare_at",
            type=float,
            default=d.compare_at,
            help="the ratio (or target) of the normal-vs-sparse and fold on/off comparisons",
        )
        _add_ranking(p)
        p.add_argument(
            "--distill",
            action=argparse.BooleanOptionalAction,
            default=d.distill,
            help="fine-tune every pruned model with the normal-trained model as its teacher (Ultralytics' "
            "knowledge distillation, about 1.5x the fine-tuning time)",
        )
        p.add_argument("--no-compare", action="store_true", help="skip the two comparisons")
        p.add_argument(
            "--deploy",
            nargs="+",
            default=list(d.deploy),
            choices=[k for k in KINDS if k != "onnx"],
            help="also a deploy table: every row's model in these kinds besides FP32 ONNX (size, latency, the "
            "artifact's own mAP50-95; INT8 calibrated on the training images)",
        )
        p.add_argument(
            "--train-args",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="extra Ultralytics train arguments for every training stage, e.g. nbs=16 optimizer=SGD",
        )
    p.set_defaults(command=command, **DEFAULTS.get(command, {}))


def parser_for(command: str, **defaults: Any) -> argparse.ArgumentParser:
    """The parser of one step, with the step's defaults overridden by `defaults` (a script's editable ones)."""
    p = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name,
        description=COMMANDS[command][1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _configure(command, p)
    p.set_defaults(**{k.replace("-", "_"): v for k, v in defaults.items()})
    return p


def _fill_from_checkpoint(a: argparse.Namespace, data: bool = True) -> None:
    """Unset --data (if `data`) / --imgsz default to what the checkpoint was trained with (the dataset must be here;
    imgsz else 640)."""
    from yoloslim import steps
    from yoloslim.data import recorded_data

    trained = steps.trained_with(a.weights)
    if data and getattr(a, "data", "") is None:
        a.data = recorded_data(trained.get("data"), a.weights)
    if getattr(a, "imgsz", 0) is None:
        a.imgsz = int(trained.get("imgsz") or 640)


def _train_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    extra = {k: v for k, v in (("workers", a.workers), ("lr_scale", a.lr_scale)) if v is not None}
    return dict(
        weights=a.weights,
        data=a.data,
        epochs=a.epochs,
        imgsz=a.imgsz,
        batch=a.batch,
        device=a.device,
        project=a.project,
        name=a.name,
        **extra,
    )


def _run_train(a: argparse.Namespace) -> Any:
    from yoloslim import steps
    from yoloslim.trainer import ranking_args

    if a.command == "train":
        return steps.train(**_train_kwargs(a), sr=a.sr)
    ranking = ranking_args(a)
    if a.target_latency:  # one number drives both stages: the sparse stage zeroes to the GFLOPs it stands for
        a.target_gflops = steps.latency_target_gflops(
            a.weights, a.target_latency, a.data, a.imgsz, a.runtime, **ranking
        )
    target = {"target_gflops": a.target_gflops} if a.target_gflops else {"sparsity": a.sparsity or 0.0}
    return steps.train(**_train_kwargs(a), sr=a.sr, **target, **ranking)


def _run_finetune(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    if a.distill_weight is not None and not a.teacher:
        raise ValueError("--distill-weight weighs the loss of learning from a teacher: give --teacher too")
    teacher = {k: v for k, v in (("distill_model", a.teacher), ("dis", a.distill_weight)) if v is not None}
    return steps.train(**_train_kwargs(a), finetune=True, **teacher)


def _run_gamma(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    return steps.gamma_report(a.weights, a.out, labels=a.labels, side_by_side=a.side_by_side, ratio=a.prune_ratio)


def _run_prune(a: argparse.Namespace) -> Any:
    from ultralytics.utils import LOGGER

    from yoloslim import steps

    for flag in ("model_size", "cfg"):
        if getattr(a, flag):
            LOGGER.info(f"--{flag.replace('_', '-')} is ignored: yoloslim reads the architecture from the checkpoint")
    if not a.no_val:
        _fill_from_checkpoint(a)
    targets = (("gflops", a.target_gflops), ("params", a.target_params), ("latency", a.target_latency))
    target = next(((kind, share) for kind, share in targets if share), None)
    return steps.prune(
        a.weights,
        None if target else a.prune_ratio,  # a target replaces the (default) ratio; both given is refused above
        a.save_dir,
        round_to=a.round_to,
        fold=not a.no_fold,
        min_keep=a.min_keep,
        data=None if a.no_val else a.data,
        target=target,
        importance=a.importance,
        streams=a.streams,
        allow_unchanged=a.allow_unchanged,
        runtime=a.runtime,
    )


def _run_val(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    _fill_from_checkpoint(a)
    return steps.validate(a.weights, a.data, imgsz=a.imgsz, batch=a.batch, device=a.device, project=a.project)


def _run_export(a: argparse.Namespace) -> Any:
    from yoloslim import steps
    from yoloslim.deploy import Kind

    _fill_from_checkpoint(a, data=False)  # INT8 asks for its calibration set; FP32 reads no data
    kind = Kind(a.format, a.quantize or 32)
    if a.data and not a.quantize:
        raise ValueError("--data is the calibration set of --quantize 8: give both, or neither")
    return steps.export(a.weights, imgsz=a.imgsz, kind=kind, data=a.data)


def _run_pipeline(a: argparse.Namespace) -> Any:
    from ultralytics.cfg import smart_value

    from yoloslim.pipeline import PipelineConfig, run_pipeline

    extra = {}
    for item in a.train_args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--train-args takes KEY=VALUE items, got '{item}'")
        extra[key] = smart_value(value)
    return run_pipeline(
        PipelineConfig(
            data=a.data,
            weights=a.weights,
            run_dir=a.run_dir,
            imgsz=a.imgsz,
            batch=a.batch,
            device=a.device,
            epochs_normal=a.epochs_normal,
            epochs_sparse=a.epochs_sparse,
            epochs_finetune=a.epochs_finetune,
            sr=a.sr,
            sparsity=a.sparsity,
            ratios=tuple(a.ratios),
            targets=tuple(a.targets),
            one_sparse_stage=a.one_sparse_stage,
            compare_at=None if a.no_compare else a.compare_at,
            importance=a.importance,
            streams=a.streams,
            round_to=a.round_to,
            distill=a.distill,
            latency_repeats=a.latency_repeats,
            deploy=tuple(a.deploy),
            train_args=extra,
        )
    )


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], Any], str]] = {
    "train": (_run_train, "normal training (sr=0)"),
    "sparse": (_run_train, "sparsity training: L1 penalty sr on prunable BN gammas, toward a --sparsity target"),
    "gamma": (_run_gamma, "histograms of prunable BN gammas of one or more checkpoints"),
    "prune": (_run_prune, "prune channels by a global ranking, to a ratio or a GFLOPs / params target; save pruned.pt"),
    "finetune": (_run_finetune, "fine-tune a pruned checkpoint as it is"),
    "val": (_run_val, "validate a checkpoint"),
    "export": (_run_export, "export a checkpoint (ONNX, OpenVINO, TorchScript; INT8) and check the artifact"),
    "pipeline": (_run_pipeline, "the whole sequence, resumable, ending in one results table and plots"),
}


def run(args: argparse.Namespace) -> Any:
    """Run a parsed step; bad input ends the process with a one-line error instead of a traceback."""
    from yoloslim.channels import UnsupportedModuleError

    try:
        return COMMANDS[args.command][0](args)
    except (FileNotFoundError, ValueError, UnsupportedModuleError) as e:
        raise SystemExit(f"yoloslim {args.command}: error: {e}") from None
    except OSError as e:  # out of disk space, a read-only folder, a name too long, ...: nothing half-written stays
        where = f" ({e.filename})" if e.filename else ""
        raise SystemExit(f"yoloslim {args.command}: error: {e.strerror or e}{where}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `yoloslim` command."""
    parser = argparse.ArgumentParser(prog="yoloslim", description="Network slimming for Ultralytics YOLO models")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(
            command, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        _configure(command, sub_parser)
    run(parser.parse_args(argv))
