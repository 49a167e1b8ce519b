"""Does fine-tuning a pruned model gain from learning from the normal-trained model as well as from the labels
(Ultralytics' knowledge distillation: `distill_model`, loss weight `dis`; `finetune.py --teacher`)?

Fine-tunes one pruned checkpoint once per distillation weight (0 = no teacher) and seed, validates each best.pt,
and prints every score with the mean, the spread and the change from the normal-trained model (the teacher).

    python bench/distill.py --pruned runs/ships-v7-r8/prune-gflops-0.4/pruned.pt \
        --teacher runs/ships-v7-r8/normal/weights/best.pt --data datasets/ships/ships.yaml --imgsz 320 \
        --epochs 10 --weights 0 1 6 --seeds 0 1 2 3 4 --run-dir runs/bench-distill-v8n

A 95-image validation set moves by points between seeds, so one run per setting decides nothing. Finished
runs are reused when the command is run again.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from table import emit
from yoloslim import steps
from yoloslim.checkpoint import finished_training, readable

BATCH = 16


def _path(value: str | Path | None) -> Path | None:
    """A run argument's file as an absolute path (None stays None), so relative and absolute spellings compare."""
    return Path(value).resolve() if value else None


def finetune(a: argparse.Namespace, weight: float, seed: int) -> Path:
    """The best.pt of one fine-tuning run (trained unless a finished one is in the run folder)."""
    name = f"dis{weight:g}-seed{seed}"
    last = a.run_dir / name / "weights" / "last.pt"
    if readable(last) and finished_training(last):
        ran = steps.trained_with(last)
        asked = (_path(a.pruned), _path(a.teacher if weight else None), a.epochs, a.lr_scale, weight)
        done = (
            _path(ran["model"]),
            _path(ran.get("distill_model")),
            ran["epochs"],
            ran["lr_scale"],
            ran["dis"] if weight else 0,
        )
        if asked != done:
            raise SystemExit(f"{last.parent.parent} was fine-tuned with other settings: use another --run-dir")
        return last.with_name("best.pt")
    teacher = {"distill_model": str(a.teacher), "dis": weight} if weight else {}
    return steps.train(
        a.pruned,
        a.data,
        a.epochs,
        a.imgsz,
        BATCH,
        None,
        a.run_dir,
        name,
        finetune=True,
        nbs=BATCH,
        seed=seed,
        lr_scale=a.lr_scale,
        **teacher,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruned", type=Path, required=True, help="the pruned checkpoint every run fine-tunes")
    p.add_argument("--teacher", type=Path, required=True, help="the normal-trained checkpoint (also the reference)")
    p.add_argument("--data", required=True)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per run")
    p.add_argument("--lr-scale", type=float, default=1.0)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 6.0], help="`dis` values; 0 = no teacher")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--run-dir", type=Path, default=Path("runs/bench-distill"))
    p.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    a = p.parse_args()
    val = dict(imgsz=a.imgsz, project=a.run_dir / "val")
    normal = steps.validate(a.teacher, a.data, name="normal", **val)["map50_95"]
    rows = []
    for weight in a.weights:
        scores = [
            steps.validate(finetune(a, weight, s), a.data, name=f"dis{weight:g}-seed{s}", **val)["map50_95"]
            for s in a.seeds
        ]
        mean = statistics.mean(scores)
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        label = f"teacher, dis={weight:g}" if weight else "no teacher"
        rows.append(
            (label, *(f"{s:.4f}" for s in scores), f"{mean:.4f} +- {spread:.4f}", f"{100 * (mean - normal):+.1f}")
        )
    caption = (
        f"Fine-tuning {a.pruned} for {a.epochs} epochs (lr x{a.lr_scale:g}), data {a.data}, imgsz {a.imgsz}; "
        f"teacher and reference {a.teacher} (mAP50-95 {normal:.4f})."
    )
    columns = ("fine-tuning", *(f"seed {s}" for s in a.seeds), "mean +- sd", "mean change vs normal-trained (pt)")
    emit(caption, columns, rows, a.out)


if __name__ == "__main__":
    main()
