"""Which `round_to` runs fastest: onnxruntime CPU latency of one checkpoint pruned to GFLOPs targets with channel
counts rounded to multiples of 1, 4, 8 and 16, against the unpruned model, side by side. Latency does not depend
on the weights' values, so the pruned models are not fine-tuned. Run it while nothing else uses the CPU.

    python bench/round_to.py --weights runs/ships-v3/sparse/weights/best.pt --imgsz 320 --out docs/ROUND_TO.md
"""

from __future__ import annotations

from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, shown

from yoloslim import steps
from yoloslim.checkpoint import load_model
from yoloslim.deploy import onnx_runners, side_by_side_latency_ms
from yoloslim.settings import Ranking
from yoloslim.report import ModelSize


def main() -> None:
    p = parser(__doc__, imgsz=320, run_dir="runs/bench-round-to", repeats=60)
    p.add_argument("--weights", type=Path, required=True, help="the unpruned (sparse-trained) checkpoint")
    p.add_argument("--targets", type=float, nargs="+", default=[0.6, 0.4])
    p.add_argument("--round-to", type=int, nargs="+", default=[1, 4, 8, 16])
    a = p.parse_args()
    base = a.run_dir / "unpruned.pt"
    if not base.exists():  # the unpruned model through the pruner, saved the same way as the pruned ones
        steps.prune(a.weights, ratio=0.0, save_dir=a.run_dir / "unpruned")
        (a.run_dir / "unpruned" / "pruned.pt").replace(base)
    models = {(1.0, 0): base}
    for target in a.targets:
        for r in a.round_to:
            out = a.run_dir / f"{target:g}-r{r}" / "pruned.pt"
            if not out.exists():
                steps.prune(a.weights, ratio=None, save_dir=out.parent, ranking=Ranking(round_to=r), target=("gflops", target))
            models[(target, r)] = out
    onnx = {}
    for ckpt in models.values():
        f = ckpt.with_suffix(".onnx")
        onnx[ckpt] = f if f.exists() else steps.export(ckpt, imgsz=a.imgsz)["onnx"]
    ms = side_by_side_latency_ms(onnx_runners(list(onnx.values())), a.imgsz, rounds=5, repeats=a.repeats)
    gflops = {c: ModelSize.of(load_model(c)[0], a.imgsz).gflops for c in models.values()}
    rows = []
    for (target, r), ckpt in models.items():
        g, t = gflops[ckpt] / gflops[base], ms[onnx[ckpt]] / ms[onnx[base]]
        label = "unpruned" if r == 0 else f"{target:g}"
        rows.append(
            (label, r or "-", f"{gflops[ckpt]:.3f}", f"{ms[onnx[ckpt]]:.2f}", f"{g:.3f}", f"{t:.3f}", f"{t / g:.2f}")
        )
    caption = (
        f"onnxruntime CPU, batch 1, imgsz {a.imgsz}, median of {a.repeats} runs in 5 interleaved rounds; "
        f"{shown(a.weights)} pruned to GFLOPs targets"
    )
    columns = ("target", "round_to", "GFLOPs", "latency ms", "GFLOPs ratio", "latency ratio", "latency / GFLOPs ratio")
    emit(caption, columns, rows, a.out)


if __name__ == "__main__":
    main()
