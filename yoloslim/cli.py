"""The `yoloslim` command and the argument parsers the root scripts share.

`yoloslim train|sparse|gamma|prune|finetune|val|export|pipeline`. Each root script is
`run(parser_for("<step>", **its_editable_defaults).parse_args())`, so a script and its subcommand take
the same flags. The default paths chain: each step reads what the previous one wrote under
`runs/yoloslim/`, so the scripts run in sequence out of the box on the built-in demo data.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from yoloslim.settings import DEFAULT_CALIB_IMAGES, RANKING, Ranking, add_flags


def parser_for(command: str, **defaults: Any) -> argparse.ArgumentParser:
    """The parser of one step, with the step's defaults overridden by `defaults` (a script's editable ones)."""
    p = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name,
        description=COMMANDS[command][1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_flags(p, command)
    p.set_defaults(command=command, **{k.replace("-", "_"): v for k, v in defaults.items()})
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

    if a.command == "train":
        return steps.train(**_train_kwargs(a), sr=a.sr)
    ranking = Ranking.of(a)
    if latency := _latency(a):  # one number drives both stages: the sparse stage zeroes to the GFLOPs it stands for
        a.target_gflops = steps.latency_target_gflops(
            a.weights, latency=latency, data=a.data, imgsz=a.imgsz, runtime=a.runtime, ranking=ranking
        )
    target = {"target_gflops": a.target_gflops} if a.target_gflops else {"sparsity": a.sparsity or 0.0}
    return steps.train(**_train_kwargs(a), sr=a.sr, **target, **{k: getattr(ranking, k) for k in RANKING})


def _latency(a: argparse.Namespace) -> float | Path | None:
    """The latency target of `--target-latency` (a share) or `--target-latency-of` (a checkpoint to run as fast as)."""
    return a.target_latency or (Path(a.target_latency_of) if a.target_latency_of else None)


def _run_finetune(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    if a.distill_weight is not None and not a.teacher:
        raise ValueError("--distill-weight weighs the loss of learning from a teacher: give --teacher too")
    teacher = {k: v for k, v in (("distill_model", a.teacher), ("dis", a.distill_weight)) if v is not None}
    return steps.train(**_train_kwargs(a), finetune=True, **teacher)


def _run_gamma(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    return steps.gamma_report(a.weights, out=a.out, labels=a.labels, side_by_side=a.side_by_side, ratio=a.prune_ratio)


def _run_prune(a: argparse.Namespace) -> Any:
    from ultralytics.utils import LOGGER

    from yoloslim import steps
    from yoloslim.data import recorded_data
    from yoloslim.deploy import Kind
    from yoloslim.reconstruct import Repair

    for flag in ("model_size", "cfg"):
        if getattr(a, flag):
            LOGGER.info(f"--{flag.replace('_', '-')} is ignored: yoloslim reads the architecture from the checkpoint")
    kinds = [Kind.parse(k) for k in a.export]  # a runtime that is not installed is said before anything is pruned
    for kind in kinds:  # and a path the artifact cannot take
        kind.check_destination(Path(a.save_dir) / steps.PRUNED)
    int8 = [k.name for k in kinds if k.bits == 8]
    if a.data is None and (not a.no_val or a.reconstruct or a.recalibrate_bn or int8):  # the checkpoint's data, then
        recorded = steps.trained_with(a.weights).get("data")  # a bad --weights fails here, as itself
        try:
            a.data = recorded_data(recorded, a.weights)
        except (FileNotFoundError, ValueError) as e:  # a downloaded .pt: prune it, say what is skipped
            if a.recalibrate_bn or a.calib_images != DEFAULT_CALIB_IMAGES:  # asked for by name: not skipped quietly
                raise ValueError(f"{e} (--recalibrate-bn and --calib-images read its training images)") from None
            if int8:
                raise ValueError(f"{e} (--export {' '.join(int8)} calibrates on its training images)") from None
            LOGGER.warning(f"yoloslim prune: {e}; pruned without validation or repair, which read it")
            a.no_val = True
    targets = (("gflops", a.target_gflops), ("params", a.target_params), ("latency", _latency(a)))
    target = next(((kind, share) for kind, share in targets if share), None)
    out = steps.prune(
        a.weights,
        ratio=None if target else a.prune_ratio,  # a target replaces the (default) ratio; both given is refused above
        save_dir=a.save_dir,
        ranking=Ranking.of(a),
        fold=not a.no_fold,
        data=a.data,
        validate_pruned=not a.no_val,
        target=target,
        allow_unchanged=a.allow_unchanged,
        runtime=a.runtime,
        how=Repair(reconstruct=a.reconstruct, bn=a.recalibrate_bn, images=a.calib_images),
    )
    imgsz = int(steps.trained_with(out).get("imgsz") or 640)  # the size it was pruned and repaired at
    for kind in kinds:
        steps.export(out, imgsz=imgsz, kind=kind, data=a.data if kind.bits == 8 else None)
    return out


def _run_val(a: argparse.Namespace) -> Any:
    from yoloslim import steps

    _fill_from_checkpoint(a)
    return steps.validate(a.weights, data=a.data, imgsz=a.imgsz, batch=a.batch, device=a.device, project=a.project)


def _run_export(a: argparse.Namespace) -> Any:
    from yoloslim import steps
    from yoloslim.deploy import Kind

    _fill_from_checkpoint(a, data=False)  # INT8 asks for its calibration set; FP32 reads no data
    kind = Kind(a.format, a.quantize or 32)
    if a.data and not a.quantize:
        raise ValueError("--data is the calibration set of --quantize 8: give both, or neither")
    return steps.export(a.weights, imgsz=a.imgsz, kind=kind, data=a.data)


def _run_pipeline(a: argparse.Namespace) -> Any:
    from dataclasses import fields

    from yoloslim.pipeline import PipelineConfig, run_pipeline

    if a.no_compare:
        a.compare_at = None
    return run_pipeline(PipelineConfig(**{f.name: getattr(a, f.name) for f in fields(PipelineConfig)}))


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


TRACEBACK = "YOLOSLIM_TRACEBACK"  # set (1) to see the traceback of an error the CLI would put in one line


def run(args: argparse.Namespace) -> Any:
    """Run a parsed step; bad input ends the process with a one-line error instead of a traceback. Errors yoloslim
    raises say what to do; any other (Ultralytics' dataset errors, torch's on bad data) is named with its type, and
    `YOLOSLIM_TRACEBACK=1` shows where it came from."""
    from yoloslim.channels import UnsupportedModuleError

    try:
        return COMMANDS[args.command][0](args)
    except (FileNotFoundError, ValueError, UnsupportedModuleError) as e:
        raise SystemExit(f"yoloslim {args.command}: error: {_first_line(e)}") from None
    except OSError as e:  # out of disk space, a read-only folder, a name too long, ...: nothing half-written stays
        where = f" ({e.filename})" if e.filename else ""
        raise SystemExit(f"yoloslim {args.command}: error: {e.strerror or e}{where}") from None
    except Exception as e:
        if os.environ.get(TRACEBACK, "").strip().lower() not in ("", "0", "false", "no"):
            raise
        said = f"{type(e).__name__}: {_first_line(e)} ({TRACEBACK}=1 shows where)"
        raise SystemExit(f"yoloslim {args.command}: error: {said}") from None


def _first_line(e: Exception) -> str:
    """The first line of an exception's message, without terminal colours: Ultralytics' dataset errors go on to
    list every image, which its log has already shown."""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
    return (lines[0].strip() if lines else "(no message)") + (" ..." if len(lines) > 1 else "")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `yoloslim` command."""
    parser = argparse.ArgumentParser(prog="yoloslim", description="Network slimming for Ultralytics YOLO models")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (_, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(
            command, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        add_flags(sub_parser, command)
        sub_parser.set_defaults(command=command)
    run(parser.parse_args(argv))
