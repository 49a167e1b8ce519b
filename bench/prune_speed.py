"""Wall time and peak memory of pruning yolov8s, yolov8x, yolo11x and yolo26x (built from yaml) on this CPU.

Each model is pruned in a fresh subprocess so its peak resident memory is its own. Targets: yolov8s under
3 s, yolov8x under 20 s, yolo11x and yolo26x at most 2 s each. Run it while nothing else uses the CPU.

    python bench/prune_speed.py [--ratio 0.5] [--models yolov8s yolov8x yolo11x yolo26x]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

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
print(f"{sys.argv[1]}: {seconds:.2f} s, peak RSS {peak / 1024:.0f} MiB (+{(peak - before) / 1024:.0f} MiB while pruning), "
      f"params {params[0] / 1e6:.2f} M -> {params[1] / 1e6:.2f} M")
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--models", nargs="+", default=["yolov8s", "yolov8x", "yolo11x", "yolo26x"])
    a = p.parse_args()
    targets = {"yolov8s": 3.0, "yolov8x": 20.0, "yolo11x": 2.0, "yolo26x": 2.0}
    for name in a.models:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, name, str(a.ratio)], capture_output=True, text=True, check=True
        )
        line = out.stdout.strip().splitlines()[-1]
        print(line + (f" (target < {targets[name]:.0f} s)" if name in targets else ""))


if __name__ == "__main__":
    main()
