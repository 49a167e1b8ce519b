"""Wall time and peak memory of pruning yolov8s, yolov8x, yolo11x and yolo26x (built from yaml) on this CPU.

Each model is pruned in a fresh subprocess so its peak resident memory is its own. Targets: yolov8s under
3 s, yolov8x under 20 s, yolo11x and yolo26x at most 2 s each. Run it while nothing else uses the CPU.

    python bench/prune_speed.py [--ratio 0.5] [--models yolov8s yolov8x yolo11x yolo26x]
"""

from __future__ import annotations

import subprocess
import sys

from common import emit, parser

CHILD = """
import resource, sys, time
import yoloslim
from ultralytics.nn.tasks import DetectionModel
from yoloslim.prune import prune_model
model = DetectionModel(sys.argv[1] + ".yaml", nc=80, verbose=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
pruned, plan, changes = prune_model(model, float(sys.argv[2]))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
print(f"{seconds:.2f},{peak / 1024:.0f},{(peak - before) / 1024:.0f},{params[0] / 1e6:.2f},{params[1] / 1e6:.2f}")
"""


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--models", nargs="+", default=["yolov8s", "yolov8x", "yolo11x", "yolo26x"])
    a = p.parse_args()
    targets = {"yolov8s": 3.0, "yolov8x": 20.0, "yolo11x": 2.0, "yolo26x": 2.0}
    rows = []
    for name in a.models:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(a.ratio)], capture_output=True, text=True, check=True
        )
        seconds, peak, added, before, after = out.stdout.strip().splitlines()[-1].split(",")
        target = f"< {targets[name]:.0f}" if name in targets else "-"
        rows.append((name, seconds, target, peak, added, f"{before} -> {after}"))
    columns = ("model", "seconds", "target s", "peak RSS MiB", "MiB added while pruning", "params M")
    emit(f"Pruning at ratio {a.ratio:g} on this CPU, each model in a fresh process", columns, rows, a.out)


if __name__ == "__main__":
    main()
