"""onnxruntime CPU latency of an unpruned model and pruned ones, side by side, next to their GFLOPs ratio.

Takes checkpoints (.pt; exported to ONNX beside them when no .onnx is there yet). By default it reads
a pipeline run folder: the ratio-0 fine-tuned model is the baseline, every other fine-tuned one is
compared with it. The latency ratio should stay close to the GFLOPs ratio (target: at most 1.15x it).

    python bench/latency.py --run-dir runs/ships --imgsz 320
    python bench/latency.py --baseline a.pt --pruned b.pt c.pt --imgsz 320
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from yoloslim import steps
from yoloslim.checkpoint import load_model
from yoloslim.deploy import onnx_runners, side_by_side_latency_ms
from yoloslim.report import ModelSize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/yoloslim/pipeline", help="pipeline run folder (if no --baseline)")
    p.add_argument("--baseline", type=Path, help="unpruned .pt")
    p.add_argument("--pruned", type=Path, nargs="*", default=[], help="pruned .pt files")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--repeats", type=int, default=60)
    a = p.parse_args()
    if a.baseline is None:
        run = Path(a.run_dir)
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
    print(f"onnxruntime CPU, batch 1, imgsz {a.imgsz}, median of {a.repeats} runs in 5 interleaved rounds")
    print(f"{'model':<48} {'GFLOPs':>8} {'ms':>8} {'GFLOPs x':>9} {'latency x':>9} {'lat/GFLOPs':>10}")
    for c in checkpoints:
        g, t = gflops[c] / gflops[base], ms[onnx[c]] / ms[onnx[base]]
        print(f"{str(c)[-48:]:<48} {gflops[c]:>8.3f} {ms[onnx[c]]:>8.2f} {g:>9.2f} {t:>9.2f} {t / g:>10.2f}")


if __name__ == "__main__":
    main()
