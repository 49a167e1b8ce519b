r"""Where the latency of a pruned model goes: onnxruntime's own per-node profile of an unpruned and a pruned
checkpoint, summed by operator type, at each image size and thread count asked for.

GFLOPs count only convolutions (and the few matmuls); this shows how much of each model's time is spent in
them and in what GFLOPs do not count (activations, concatenations, splits, resizes, the box decode), which is
what keeps the latency ratio above the GFLOPs ratio. Run it while nothing else uses the CPU.

    python bench/latency_profile.py --baseline runs/bench-round-to/unpruned.pt \
        --pruned runs/bench-round-to/0.4-r16/pruned.pt --imgsz 320 640 --threads 0 1
    python bench/latency_profile.py --family yolo26n.yaml --target 0.4 --imgsz 320
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, shown

from ultralytics.nn.tasks import DetectionModel

from yoloslim import steps
from yoloslim.atomic import atomic_write_text
from yoloslim.checkpoint import load_model, save_checkpoint
from yoloslim.report import ModelSize
from yoloslim.settings import Ranking

GAMMA_8 = Ranking(importance="gamma", round_to=8)  # an untrained model has no loss to rank by

CONV = ("Conv", "ConvTranspose", "FusedConv", "NchwcConv", "QLinearConv")


def onnx_at(checkpoint: Path, imgsz: int, work: Path) -> Path:
    """The checkpoint exported at `imgsz` (exports are fixed-size), cached under `work`."""
    folder = work / f"{checkpoint.parent.name}-{imgsz}"
    f = folder / checkpoint.with_suffix(".onnx").name
    if not f.exists():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, folder / checkpoint.name)
        steps.export(folder / checkpoint.name, imgsz=imgsz)
    return f


def profile_ms(path: Path, imgsz: int, threads: int, runs: int, warmup: int = 5) -> dict[str, float]:
    """Mean milliseconds per run spent in each operator type (onnxruntime's node profile), plus 'total': the
    median duration of a whole run. The first `warmup` runs are not counted."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = onnxruntime.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "profile")
        opts.intra_op_num_threads = threads
        sess = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).random((1, inp.shape[1], imgsz, imgsz), dtype=np.float32)
        for _ in range(warmup + runs):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    start = run_events[0]["ts"]
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / len(run_events)
    per_op["total"] = float(np.median([e["dur"] / 1e3 for e in run_events]))
    return dict(per_op)


def family_pair(family: str, target: float, imgsz: int, work: Path) -> tuple[Path, Path]:
    """An untrained model of `family` and its prune to `target` of the GFLOPs, as checkpoints under `work`."""
    folder = work / Path(family).stem
    unpruned, pruned = folder / "unpruned.pt", folder / "pruned.pt"
    if not pruned.exists():
        model = DetectionModel(family, nc=80, verbose=False)
        model.args = {"imgsz": imgsz}
        save_checkpoint(model, unpruned, train_args={"imgsz": imgsz})
        steps.prune(unpruned, ratio=None, save_dir=folder, target=("gflops", target), ranking=GAMMA_8)
    return unpruned, pruned


def main() -> None:
    p = parser(__doc__, imgsz=[320], run_dir="runs/bench-latency-profile", repeats=60)
    p.add_argument("--baseline", type=Path, help="unpruned .pt")
    p.add_argument("--pruned", type=Path, help="pruned .pt")
    p.add_argument(
        "--family",
        help="instead: a model yaml (yolov8n.yaml, yolo11n.yaml, yolo26n.yaml), built untrained and pruned to "
        "--target of its GFLOPs, round_to 8, at the first --imgsz (the structure is what latency depends on)",
    )
    p.add_argument("--target", type=float, default=0.4, help="GFLOPs share of the --family prune")
    p.add_argument("--threads", type=int, nargs="+", default=[0], help="onnxruntime intra-op threads (0 = every core)")
    a = p.parse_args()
    if a.family:
        a.baseline, a.pruned = family_pair(a.family, a.target, a.imgsz[0], a.run_dir)
    elif not (a.baseline and a.pruned):
        p.error("give --baseline and --pruned, or --family")
    texts = []
    for imgsz in a.imgsz:
        base, pruned = onnx_at(a.baseline, imgsz, a.run_dir), onnx_at(a.pruned, imgsz, a.run_dir)
        for threads in a.threads:
            b, q = profile_ms(base, imgsz, threads, a.repeats), profile_ms(pruned, imgsz, threads, a.repeats)
            conv = {m: sum(v for k, v in t.items() if k in CONV) for m, t in (("b", b), ("q", q))}
            nodes = {m: sum(v for k, v in t.items() if k != "total") for m, t in (("b", b), ("q", q))}
            ops = sorted((k for k in b.keys() | q.keys() if k != "total"), key=lambda k: -b.get(k, 0.0))
            rows = [
                (k, f"{b.get(k, 0):.2f}", f"{q.get(k, 0):.2f}", f"{q.get(k, 0) / b[k]:.2f}" if b.get(k) else "-")
                for k in ops
            ]
            rows += [
                ("all convolutions", f"{conv['b']:.2f}", f"{conv['q']:.2f}", f"{conv['q'] / conv['b']:.2f}"),
                ("all nodes", f"{nodes['b']:.2f}", f"{nodes['q']:.2f}", f"{nodes['q'] / nodes['b']:.2f}"),
                ("run (wall)", f"{b['total']:.2f}", f"{q['total']:.2f}", f"{q['total'] / b['total']:.2f}"),
            ]
            gflops = (
                ModelSize.of(load_model(a.pruned)[0], imgsz).gflops
                / ModelSize.of(load_model(a.baseline)[0], imgsz).gflops
            )
            caption = (
                f"imgsz {imgsz}, {threads or 'all'} thread(s), mean ms per run over {a.repeats} runs "
                f"(onnxruntime {onnxruntime.__version__} node profile): {shown(a.baseline)} vs {shown(a.pruned)}; GFLOPs "
                f"{gflops:.3f}x, latency {q['total'] / b['total']:.3f}x: latency/GFLOPs {q['total'] / b['total'] / gflops:.2f}"
            )
            texts.append(emit(caption, ("operator", "unpruned ms", "pruned ms", "ratio"), rows, None))
    if a.out:
        atomic_write_text(a.out, "\n".join(texts))


if __name__ == "__main__":
    main()
