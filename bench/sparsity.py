"""How sparse the sparse stage leaves the gammas: the seed's plain L1 form against the target form, side by side.

Every row starts from the same normal-trained checkpoint (the demo pipeline's, trained here first if it is
missing) and runs the same sparse budget on the demo data (imgsz 160, batch 16, nbs 16, so one optimizer
step per batch). Columns: median |gamma| and the share < 0.01 at the end, the sparse model's mAP50-95,
mAP50-95 after pruning it at the target ratio (before fine-tuning) and its GFLOPs against the unpruned
model's, and the stage's wall time.

    python bench/sparsity.py [--epochs 15] [--target 0.6] [--run-dir runs/bench-sparsity] [--out FILE.md]
"""

from __future__ import annotations

import time
from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from common import BATCH, emit, parser, shown
from yoloslim import steps
from yoloslim.checkpoint import load_model
from yoloslim.pipeline import PipelineConfig
from yoloslim.sparsity import gamma_stats, prunable_gammas

IMGSZ = 160
ROWS = (  # label, train arguments
    ("seed form: AdamW (auto), sr 1e-2", {"sr": 1e-2}),
    ("seed form: SGD lr0 0.01, sr 1e-2", {"sr": 1e-2, "optimizer": "SGD", "lr0": 0.01}),
    ("seed form: SGD lr0 0.01, sr 5e-2", {"sr": 5e-2, "optimizer": "SGD", "lr0": 0.01}),
    ("target: AdamW (auto), sr 1e-2, sparsity {target}", {"sr": 1e-2, "sparsity": None}),
    (
        "target: SGD lr0 0.01, sr 1e-2, sparsity {target}",
        {"sr": 1e-2, "sparsity": None, "optimizer": "SGD", "lr0": 0.01},
    ),
)


def normal_checkpoint(run_dir: Path) -> Path:
    """The demo pipeline's normal-trained checkpoint (same settings as `yoloslim pipeline`'s first stage)."""
    d = PipelineConfig()
    best = run_dir / "normal" / "weights" / "best.pt"
    if not best.exists():
        steps.train(
            d.weights,
            data="demo",
            epochs=d.epochs_normal,
            imgsz=IMGSZ,
            batch=BATCH,
            project=run_dir,
            name="normal",
            nbs=BATCH,
        )
    return best


def measure(normal: Path, run_dir: Path, name: str, epochs: int, target: float, args: dict) -> dict:
    """One row: sparse-train from `normal`, then validate it and its pruned copy."""
    args = {**args, "sparsity": target} if "sparsity" in args else args
    start = time.perf_counter()
    sparse = steps.train(
        normal,
        data="demo",
        epochs=epochs,
        imgsz=IMGSZ,
        batch=BATCH,
        project=run_dir,
        name=name,
        nbs=BATCH,
        **args,
    )
    seconds = time.perf_counter() - start
    stats = gamma_stats(prunable_gammas(load_model(sparse)[0]))
    metrics = steps.validate(sparse, data="demo", imgsz=IMGSZ, project=run_dir / "val", name=name)
    pruned = steps.prune(sparse, ratio=target, save_dir=run_dir / f"{name}-pruned")
    pruned_metrics = steps.validate(pruned, data="demo", imgsz=IMGSZ, project=run_dir / "val", name=f"{name}-pruned")
    return {
        "median": stats["sparsity/median_gamma"],
        "share": stats["sparsity/share_lt_0.01"],
        "map": metrics["map50_95"],
        "pruned": pruned_metrics["map50_95"],
        "gflops": pruned_metrics["gflops"] / metrics["gflops"],
        "seconds": seconds,
    }


def main() -> None:
    p = parser(__doc__, run_dir="runs/bench-sparsity")
    d = PipelineConfig()
    p.add_argument("--epochs", type=int, default=d.epochs_sparse, help="sparse epochs (default: %(default)s)")
    p.add_argument(
        "--target", type=float, default=d.sparsity, help="sparsity target and prune ratio (default: %(default)s)"
    )
    a = p.parse_args()
    run_dir = a.run_dir.resolve()
    normal = normal_checkpoint(run_dir)
    results = [
        (label, measure(normal, run_dir, f"row{i}", a.epochs, a.target, args)) for i, (label, args) in enumerate(ROWS)
    ]
    T = f"{a.target:g}"
    caption = (
        f"{a.epochs} sparse epochs from {shown(normal)}, demo data, imgsz {IMGSZ}, batch {BATCH}, nbs {BATCH}, "
        f"pruned at {T} (before fine-tuning)"
    )
    columns = (
        "row",
        "median \\|gamma\\|",
        "share < 0.01",
        "sparse mAP50-95",
        f"pruned at {T} mAP50-95",
        "pruned GFLOPs",
        "seconds",
    )
    rows = [
        (
            label.format(target=T),
            f"{r['median']:.3f}",
            f"{r['share']:.1%}",
            f"{r['map']:.4f}",
            f"{r['pruned']:.4f}",
            f"{r['gflops']:.2f}x",
            f"{r['seconds']:.0f}",
        )
        for label, r in results
    ]
    emit(caption, columns, rows, a.out)


if __name__ == "__main__":
    main()
