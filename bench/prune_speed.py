"""Wall time and peak memory of pruning yolov8s, yolov8x, yolo11x and yolo26x (built from yaml) on this CPU.

Each model is pruned in a fresh subprocess so its peak resident memory is its own. Targets: yolov8s under
3 s, yolov8x under 20 s, yolo11x and yolo26x at most 2 s each. Run it while nothing else uses the CPU.

    python bench/prune_speed.py [--ratio 0.5] [--models yolov8s yolov8x yolo11x yolo26x]

With `--weights W --data D`, the user's one command instead: `yoloslim prune` of a trained checkpoint to
`--target` GFLOPs with its default Taylor ranking and repair (calibration, least squares), validation skipped, timed
whole in a fresh process, with its peak resident memory. Target: a yolov8s at imgsz 320 in at most 3 minutes and 4 GB.
With `--export KIND...` the command also exports (`prune --export`) and validates as a user runs it (the pruned model,
and an INT8 artifact beside its FP32 model): target 5 minutes for all of it; the table then gives each INT8
artifact's mAP50-95 against the unpruned checkpoint's, validated the same way (batch 1, outside the timing).

    python bench/prune_speed.py --weights runs/starts/v8s/weights/last.pt --data datasets/hardhat/hardhat.yaml \
        --imgsz 320 --target 0.7 [--export openvino-int8]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import emit, parser
from yoloslim.artifacts import validate_artifact
from yoloslim.checkpoint import load_model

CHILD = """
import resource, sys, time
import yoloslim
from ultralytics.nn.tasks import DetectionModel
from yoloslim.prune import prune_model
from yoloslim.settings import Ranking
model = DetectionModel(sys.argv[1] + ".yaml", nc=80, verbose=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
pruned, plan, changes = prune_model(model, float(sys.argv[2]), ranking=Ranking(importance="gamma"))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
params = [sum(p.numel() for p in m.parameters()) for m in (model, pruned)]
print(f"{seconds:.2f},{peak / 1024:.0f},{(peak - before) / 1024:.0f},{params[0] / 1e6:.2f},{params[1] / 1e6:.2f}")
"""


def at_imgsz(weights: Path, imgsz: int, folder: Path) -> Path:
    """A copy of the checkpoint that says it was trained at `imgsz` (prune calibrates at the trained size)."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)  # an Ultralytics checkpoint: pickled modules
    ckpt["train_args"] = {**(ckpt.get("train_args") or {}), "imgsz": imgsz}
    torch.save(ckpt, folder / "start.pt")
    return folder / "start.pt"


def one_command(a) -> None:
    """Time `yoloslim prune` with its default repair on a trained checkpoint (and `--export`), in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="yoloslim-prune-speed-") as out:
        weights = at_imgsz(a.weights, a.imgsz, Path(out))
        argv = ["prune", "--weights", str(weights), "--data", a.data, "--target-gflops", str(a.target)]
        argv += ["--export", *a.export] if a.export else ["--no-val"]
        start = time.perf_counter()
        done = subprocess.run(["yoloslim", *argv, "--save-dir", out], check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        report = (Path(out) / "prune_report.txt").read_text()
        unpruned = load_model(weights)[0]
        int8 = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in a.export and "mAP50-95" in line]
        base = validate_artifact(weights, a.data, a.imgsz, unpruned) if int8 else None
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    reached = next(line for line in report.splitlines() if line.startswith("GFLOPs"))
    target = "<= 300" if a.export else "<= 180"
    rows = [(str(a.weights), a.imgsz, f"{seconds:.0f}", target, f"{peak:.0f}", "<= 4096", reached)]
    columns = ["checkpoint", "imgsz", "seconds", "target s", "peak RSS MiB", "target MiB", "GFLOPs"]
    if int8:
        scores = [(line.split()[0], _map_of(line)) for line in int8]
        columns.append(f"INT8 artifact mAP50-95 (unpruned {base:.4f})")
        rows = [(*rows[0], "; ".join(f"{kind} {m:.4f} ({100 * (m - base):+.2f} pt)" for kind, m in scores))]
    what = f"yoloslim prune --target-gflops {a.target:g}" + (f" --export {' '.join(a.export)}" if a.export else "")
    emit(f"{what} with the default repair, one fresh process", columns, rows, a.out)


def _map_of(line: str) -> float:
    """The artifact's mAP50-95 in an export's line ("... mAP50-95 0.5123 (FP32 model 0.5150)")."""
    return float(line.split("mAP50-95 ", 1)[1].split()[0])


def main() -> None:
    p = parser(__doc__, data="", imgsz=320)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--models", nargs="+", default=["yolov8s", "yolov8x", "yolo11x", "yolo26x"])
    p.add_argument("--weights", type=Path, help="a trained checkpoint: time the one command instead (see above)")
    p.add_argument("--target", type=float, default=0.7, help="GFLOPs share, with --weights")
    p.add_argument("--export", nargs="+", default=[], help="with --weights: kinds `prune --export` writes, timed too")
    a = p.parse_args()
    if a.weights:
        return one_command(a)
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
