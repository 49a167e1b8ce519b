r"""Which ranking reaches a GFLOPs budget with the best accuracy: plain |gamma| or |gamma| per GFLOP, with the
residual streams pruned or not. Every row starts from the same normal-trained checkpoint, sparse-trains to the
same `target_gflops` with its own ranking (so the zeros fall where that ranking puts them), prunes to the
target (removing only those zeros), then fine-tunes. Columns: GFLOPs reached (Ultralytics' count), params,
mAP50-95 of the pruned model before and after fine-tuning, and their change from the normal-trained model.

    python bench/ranking.py --normal runs/ships-v3/normal/weights/best.pt --data datasets/ships/ships.yaml \
        --imgsz 320 --epochs 15 --finetune 5 --target 0.4 --run-dir runs/bench-ranking --out docs/RANKING.md

Each finished row's artefacts are reused when the command is run again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from yoloslim import steps
from common import BATCH, emit, parser, shown

from yoloslim.atomic import atomic_write_text
from yoloslim.settings import Ranking

# every stage: one optimizer step per batch, and Ultralytics' 3 warm-up epochs (the first rows were measured
# before yoloslim turned warm-up off for trained starts; kept so that all rows compare)
TRAIN = {"nbs": BATCH, "warmup_epochs": 3.0}
ROWS = (  # label, ranking arguments (shared by the sparse stage's zeroing and by prune)
    ("flops (gamma per GFLOP), streams pruned", {"importance": "flops", "streams": True}),
    ("gamma, streams pruned", {"importance": "gamma", "streams": True}),
    ("gamma, streams whole", {"importance": "gamma", "streams": False}),
    ("sqrt-flops (gamma per sqrt GFLOP), streams pruned", {"importance": "sqrt-flops", "streams": True}),
)


def measure(a: argparse.Namespace, name: str, ranking: dict) -> dict:
    """One row: sparse-train to the target with `ranking`, prune to it, validate, fine-tune, validate."""
    out = a.run_dir / f"{name}.json"
    if out.exists():
        return json.loads(out.read_text())
    common = dict(imgsz=a.imgsz, project=a.run_dir / "val")
    sparse = a.run_dir / name / "weights" / "best.pt"
    if not sparse.exists():
        steps.train(
            a.normal,
            data=a.data,
            epochs=a.epochs,
            imgsz=a.imgsz,
            batch=BATCH,
            project=a.run_dir,
            name=name,
            sr=1e-2,
            target_gflops=a.target,
            **TRAIN,
            **ranking,
        )
    pruned = steps.prune(
        sparse,
        ratio=None,
        save_dir=a.run_dir / f"{name}-pruned",
        target=("gflops", a.target),
        ranking=Ranking(**ranking),
    )
    before = steps.validate(pruned, data=a.data, name=f"{name}-pruned", **common)
    tuned = steps.train(
        pruned,
        data=a.data,
        epochs=a.finetune,
        imgsz=a.imgsz,
        batch=BATCH,
        project=a.run_dir,
        name=f"{name}-ft",
        finetune=True,
        **TRAIN,
    )
    after = steps.validate(tuned, data=a.data, name=f"{name}-ft", **common)
    row = {"before": before, "after": after}
    atomic_write_text(out, json.dumps(row))
    return row


def main() -> None:
    p = parser(__doc__, data=True, imgsz=320, run_dir="runs/bench-ranking")
    p.add_argument("--normal", type=Path, required=True, help="the normal-trained checkpoint every row starts from")
    p.add_argument("--epochs", type=int, default=15, help="sparse epochs per row")
    p.add_argument("--finetune", type=int, default=5, help="fine-tuning epochs per row")
    p.add_argument("--target", type=float, default=0.4, help="GFLOPs share to keep")
    p.add_argument("--rows", type=int, nargs="+", default=list(range(len(ROWS))), help="which rows to run")
    a = p.parse_args()
    normal = steps.validate(a.normal, data=a.data, imgsz=a.imgsz, project=a.run_dir / "val", name="normal")
    rows = []
    for i in a.rows:
        label, ranking = ROWS[i]
        r = measure(a, f"row{i}", ranking)
        b, f = r["before"], r["after"]
        rows.append(
            (
                label,
                f"{b['gflops']:.3f} ({b['gflops'] / normal['gflops']:.3f}x)",
                f"{b['params'] / 1e6:.3f} M ({b['params'] / normal['params']:.2f}x)",
                f"{b['map50_95']:.4f}",
                f"{f['map50_95']:.4f}",
                f"{100 * (b['map50_95'] - normal['map50_95']):+.1f} / {100 * (f['map50_95'] - normal['map50_95']):+.1f}",
            )
        )
    caption = (
        f"Target {a.target:g}x GFLOPs, {a.epochs} sparse + {a.finetune} fine-tuning epochs from {shown(a.normal)} "
        f"(mAP50-95 {normal['map50_95']:.4f}), data {a.data}, imgsz {a.imgsz}."
    )
    columns = ("ranking", "GFLOPs", "params", "mAP50-95 pruned", "mAP50-95 fine-tuned", "change vs normal-trained (pt)")
    emit(caption, columns, rows, a.out)


if __name__ == "__main__":
    main()
