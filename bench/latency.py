"""onnxruntime CPU latency of an unpruned model and pruned ones, side by side, next to their GFLOPs ratio.

Takes checkpoints (.pt; exported to ONNX beside them when no .onnx is there yet). By default it reads
a pipeline run folder: the ratio-0 fine-tuned model is the baseline, every other fine-tuned one is
compared with it. The latency ratio should stay close to the GFLOPs ratio (target: at most 1.15x it).

    python bench/latency.py --run-dir runs/ships --imgsz 320
    python bench/latency.py --baseline a.pt --pruned b.pt c.pt --imgsz 320
"""

from __future__ import annotations

from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, shown
from yoloslim import steps
from yoloslim.checkpoint import load_model
from yoloslim.deploy import onnx_runners, side_by_side_latency_ms
from yoloslim.report import ModelSize


def main() -> None:
    p = parser(__doc__, imgsz=160, run_dir="runs/yoloslim/pipeline", repeats=60)
    p.add_argument("--baseline", type=Path, help="unpruned .pt (default: the --run-dir pipeline's finetune-0)")
    p.add_argument("--pruned", type=Path, nargs="*", default=[], help="pruned .pt files")
    a = p.parse_args()
    if a.baseline is None:
        run = a.run_dir
        a.baseline = run / "finetune-0" / "weights" / "best.pt"
        ratios = {f: f.parent.parent.name.removeprefix("finetune-") for f in run.glob("finetune-0.*/weights/best.pt")}
        a.pruned = sorted(
            (f for f, r in ratios.items() if r.replace(".", "", 1).isdigit()), key=lambda f: float(ratios[f])
        )
    checkpoints = [a.baseline, *a.pruned]
    onnx = {}
    for ckpt in checkpoints:
        f = ckpt.with_suffix(".onnx")
        onnx[ckpt] = f if f.exists() else steps.export(ckpt, imgsz=a.imgsz)["onnx"]
    ms = side_by_side_latency_ms(onnx_runners(list(onnx.values())), a.imgsz, rounds=5, repeats=a.repeats)
    gflops = {c: ModelSize.of(load_model(c)[0], a.imgsz).gflops for c in checkpoints}
    base = a.baseline
    rows = []
    for c in checkpoints:
        g, t = gflops[c] / gflops[base], ms[onnx[c]] / ms[onnx[base]]
        rows.append((shown(c), f"{gflops[c]:.3f}", f"{ms[onnx[c]]:.2f}", f"{g:.2f}", f"{t:.2f}", f"{t / g:.2f}"))
    caption = f"onnxruntime CPU, batch 1, imgsz {a.imgsz}, median of {a.repeats} runs in 5 interleaved rounds"
    emit(caption, ("model", "GFLOPs", "ms", "GFLOPs x", "latency x", "latency / GFLOPs"), rows, a.out)


if __name__ == "__main__":
    main()
