r"""The per-layer guard: how much of each layer a global ranking may remove. Prunes one checkpoint to one GFLOPs
target with several per-layer floors (`min_keep`: each layer keeps at least that share of its channels, so
at most 1 - min_keep is removed) and both importances, and validates each pruned model before fine-tuning.
Run it on a pretrained start (normal-trained, and sparse-trained) to choose the defaults.

    python bench/guard.py --weights runs/ships-v8s-v3/normal/weights/best.pt --data datasets/ships/ships.yaml \
        --imgsz 256 --target 0.5 --out docs/GUARD.md
"""

from __future__ import annotations

from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, shown

from yoloslim import steps
from yoloslim.checkpoint import load_model, pruned_info
from yoloslim.settings import Ranking


def main() -> None:
    p = parser(__doc__, data=True, imgsz=256, run_dir="runs/bench-guard")
    p.add_argument("--weights", type=Path, nargs="+", required=True, help="checkpoints to prune")
    p.add_argument("--target", type=float, default=0.5, help="GFLOPs share to keep")
    p.add_argument("--min-keep", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3])
    p.add_argument("--importance", nargs="+", default=["flops", "gamma"])
    a = p.parse_args()
    rows = []
    for w in a.weights:
        base = steps.validate(w, data=a.data, imgsz=a.imgsz, project=a.run_dir / "val", name=w.parent.parent.name)
        rows.append((shown(w), "unpruned", "-", f"{base['gflops']:.3f}", f"{base['map50_95']:.4f}", "-", 0))
        for importance in a.importance:
            for floor in a.min_keep:
                name = f"{w.parent.parent.name}-{importance}-{floor:g}"
                out = steps.prune(
                    w,
                    ratio=None,
                    save_dir=a.run_dir / name,
                    target=("gflops", a.target),
                    ranking=Ranking(importance=importance, min_keep=floor),
                )
                m = steps.validate(out, data=a.data, imgsz=a.imgsz, project=a.run_dir / "val", name=name)
                layers = [
                    line.split(",") for line in (a.run_dir / name / "prune_layers.csv").read_text().splitlines()[1:]
                ]
                kept = min(int(after) / int(before) for _, before, after, prunable in layers if prunable == "True")
                ratio = pruned_info(load_model(out)[0])["removed"]
                gflops = f"{m['gflops'] / base['gflops']:.3f}x"
                rows.append(
                    (shown(w), importance, floor, gflops, f"{m['map50_95']:.4f}", f"{kept:.1%}", f"{ratio:.3f}")
                )
    caption = (
        f"Each checkpoint pruned to {a.target:g}x GFLOPs, validated before fine-tuning ({a.data}, imgsz {a.imgsz})."
    )
    columns = (
        "checkpoint",
        "importance",
        "min_keep",
        "GFLOPs",
        "mAP50-95",
        "smallest layer kept",
        "equivalent channel ratio",
    )
    emit(caption, columns, rows, a.out)


if __name__ == "__main__":
    main()
