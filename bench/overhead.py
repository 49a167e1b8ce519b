"""Step-time overhead of sparsity training: sparse vs normal (sr = 0) SlimTrainer steps.

Sparse is timed in both forms: the plain L1 term (sr > 0) and the target form (sr > 0 with sparsity=0.5,
which also re-ranks and zeroes channels in the model and its EMA). yolov8s at imgsz 320 on the demo
data, CPU. The settings run alternately in one process, several rounds each, and every optimizer step
(forward, loss, backward, L1 term, clip, step, zeroing) is timed between Ultralytics'
on_train_batch_start / on_train_batch_end callbacks. Prints the median step times and their ratios to
normal (target: at most 1.03).

    python bench/overhead.py [--rounds 3] [--images 48]
"""

from __future__ import annotations

import statistics
import tempfile
import time

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser
from yoloslim import YOLO
from yoloslim.data import demo_dataset


SETTINGS = {"normal": {"sr": 0.0}, "sparse sr": {"sr": 1e-2}, "sparse target": {"sr": 1e-2, "sparsity": 0.5}}


def timed_steps(data: str, setting: str, project: str, batch: int) -> list[float]:
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
        **SETTINGS[setting],
        val=False,
        plots=False,
        project=project,
        name=setting.replace(" ", "-"),
        exist_ok=True,
        verbose=False,
        device="cpu",
    )
    return times[1:]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    data = str(demo_dataset(n_train=a.images, n_val=8, imgsz=160))
    steps: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as project:
        for _ in range(a.rounds):
            for setting in steps:
                steps[setting] += timed_steps(data, setting, project, a.batch)
    median = {setting: statistics.median(times) for setting, times in steps.items()}
    caption = f"yolov8s imgsz 320 batch {a.batch}, {len(steps['normal'])} steps each, CPU (target: ratio <= 1.03)"
    rows = [(k, f"{v:.3f}", f"{v / median['normal']:.3f}") for k, v in median.items()]
    emit(caption, ("setting", "median step s", "ratio to normal"), rows, a.out)


if __name__ == "__main__":
    main()
