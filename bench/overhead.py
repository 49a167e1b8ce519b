"""Step-time overhead of sparsity training: sparse (sr > 0) vs normal (sr = 0) SlimTrainer steps.

yolov8s at imgsz 320 on the demo data, CPU. The two settings run alternately in one process, several
rounds each, and every optimizer step (forward, loss, backward, L1 term, clip, step) is timed between
Ultralytics' on_train_batch_start / on_train_batch_end callbacks. Prints the median step times and
their ratio (target: at most 1.03).

    python bench/overhead.py [--rounds 3] [--images 48]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import yoloslim  # noqa: F401  (offline settings first)
from yoloslim import YOLO
from yoloslim.data import demo_dataset


def timed_steps(data: str, sr: float, project: str, batch: int) -> list[float]:
    """Seconds per training step of one short run (the first step, warm-up, is dropped)."""
    times: list[float] = []
    start = [0.0]
    model = YOLO("yolov8s.yaml")
    model.add_callback("on_train_batch_start", lambda t: start.__setitem__(0, time.perf_counter()))
    model.add_callback("on_train_batch_end", lambda t: times.append(time.perf_counter() - start[0]))
    model.train(
        data=data,
        epochs=1,
        imgsz=320,
        batch=batch,
        nbs=batch,
        sr=sr,
        val=False,
        plots=False,
        project=project,
        name=f"sr{sr}",
        exist_ok=True,
        verbose=False,
        device="cpu",
    )
    return times[1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    data = str(demo_dataset(n_train=a.images, n_val=8, imgsz=160))
    steps: dict[float, list[float]] = {0.0: [], 1e-2: []}
    with tempfile.TemporaryDirectory() as project:
        for _ in range(a.rounds):
            for sr in steps:
                steps[sr] += timed_steps(data, sr, project, a.batch)
    normal, sparse = (statistics.median(steps[sr]) for sr in steps)
    print(f"yolov8s imgsz 320 batch {a.batch}, {len(steps[0.0])} steps each, CPU")
    print(f"median step: normal {normal:.3f} s, sparse {sparse:.3f} s")
    print(f"sparse/normal step-time ratio: {sparse / normal:.3f} (target <= 1.03)")


if __name__ == "__main__":
    main()
