r"""The frontier: slim (or prune) a larger model, or train a smaller dense one? Accuracy against deployed latency and
GFLOPs, one line per start, dense points marked, each point over seeds with its interval (issue 32).

Each point is one model at one budget from one start, `START/POINT=GLOB`: the glob gives the checkpoints of its seeds
(for example the last.pt files of a `bench/compare.py` arm). A point named `dense` (or `dense-...`) is its start
trained on unpruned, drawn as a square. For every point:

- GFLOPs and parameters at `--imgsz`;
- mAP50-95 of each seed's checkpoint (FP32, as `yoloslim val` gives it): the mean and a 95% t interval over seeds;
- for each deployable kind (`--kinds`), the first seed's artifact: its batch-1 CPU latency (every artifact timed side
  by side in interleaved rounds, as `bench/deploy.py` times them) and its own mAP50-95. Seeds share their widths
  (the one-shot prune of one start is deterministic), so one artifact per point gives the point's latency; the
  artifact's mAP beside the FP32 one says what the runtime and INT8 cost.

`--reference START/POINT` adds each point's difference from that one, with a Welch 95% interval (points of
different starts share no pairing). The table (Markdown, with a CSV and the plot `.png` beside `--out`) names the
commit, the command and the CPU. Run it while nothing else uses the CPU.

    python bench/frontier.py --data datasets/hardhat/hardhat.yaml --imgsz 256 \
        --points "v8s/dense=runs/c07/d3/seed*/continue/weights/last.pt" \
                 "v8s/0.3x=runs/c07/os3q/seed*/finetune/weights/last.pt" \
                 "charnet/dense=runs/c08/charnet/d3/seed*/continue/weights/last.pt" \
        --kinds onnx openvino-int8 --reference charnet/dense --run-dir runs/frontier --out docs/frontier.md
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yoloslim  # noqa: F401  (offline settings first)
from common import commit, cpu, emit, paired_interval, parser, shown, welch_interval, write_csv

from yoloslim import steps
from yoloslim.atomic import atomic_write_text
from yoloslim.deploy import Kind
from yoloslim.plots import plot_frontier


def point(text: str) -> tuple[str, str, list[Path]]:
    """A `--points` item, `START/POINT=GLOB`, as (start, point, its checkpoints in name order), for argparse."""
    name, sep, pattern = text.partition("=")
    start, slash, label = name.partition("/")
    if not (sep and slash and start and label and pattern):
        raise argparse.ArgumentTypeError(f"'{text}' is not START/POINT=GLOB, e.g. v8s/dense=runs/x/seed*/last.pt")
    files = sorted(Path(f) for f in glob.glob(pattern))
    if not files:
        raise argparse.ArgumentTypeError(f"'{text}': no checkpoint matches {pattern}")
    return start, label, files


def default_kinds() -> list[str]:
    """ONNX FP32 and INT8, and OpenVINO INT8 where OpenVINO is installed."""
    try:
        Kind.parse("openvino-int8").check()
    except ValueError:
        return ["onnx", "onnx-int8"]
    return ["onnx", "onnx-int8", "openvino-int8"]


def seed_scores(files: list[Path], a: argparse.Namespace, cache: dict[str, float]) -> list[float]:
    """mAP50-95 of each checkpoint, reused from `cache` (by path, size and time) when the file has not changed."""
    scores = []
    for f in files:
        key = f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}"
        if key not in cache:
            cache[key] = steps.validate(f, data=a.data, imgsz=a.imgsz, project=a.run_dir / "val", name="seed")[
                "map50_95"
            ]
        scores.append(cache[key])
    return scores


def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per point: its seeds' scores and interval, and each kind's latency and artifact mAP."""
    cache_file = a.run_dir / "scores.json"
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    records = []
    for start, label, files in a.points:
        scores = seed_scores(files, a, cache)
        atomic_write_text(cache_file, json.dumps(cache, indent=1))  # a stopped run keeps what it validated
        mean, low, high = paired_interval(scores)
        records.append(
            {"start": start, "point": label, "dense": label.split("-")[0] == "dense", "seeds": len(files),
             "scores": scores, "map50_95": mean, "low": low, "high": high, "files": files}
        )
    models = {_slug(r): r["files"][0] for r in records}  # the label names its artifacts' folder
    rows = steps.deploy_table(models, a.kinds, data=a.data, imgsz=a.imgsz, work=a.run_dir, rounds=a.rounds,
                              repeats=a.repeats)
    for r in records:
        mine = [row for row in rows if row["model"] == _slug(r)]
        r.update(gflops=mine[0]["gflops"], params=mine[0]["params"])
        r["kinds"] = {row["kind"]: {"latency_ms": row["latency_ms"], "map50_95": row["map50_95"]} for row in mine}
    return records


def _slug(record: dict[str, Any]) -> str:
    """A point's name as a folder name: `START-POINT` with every run of other characters than letters, digits, `.`
    and `-` made one `_`."""
    return re.sub(r"[^\w.-]+", "_", f"{record['start']}-{record['point']}")


def table(records: list[dict[str, Any]], kinds: list[str], reference: str | None) -> tuple[list[str], list[list]]:
    """The table's columns and rows."""
    columns = ["start", "point", "seeds", "GFLOPs", "params (M)", "mAP50-95 [95% interval]"]
    columns += [f"{kind} {what}" for kind in kinds for what in ("ms", "mAP")]
    ref = next((r for r in records if f"{r['start']}/{r['point']}" == reference), None)
    if ref:
        columns.append(f"vs {reference} (pt) [95% interval]")
    rows = []
    for r in records:
        row = [r["start"], r["point"], r["seeds"], f"{r['gflops']:.2f}", f"{r['params'] / 1e6:.2f}"]
        spread = f"[{r['low']:.4f}, {r['high']:.4f}]" if r["seeds"] > 1 else "(one seed: no interval)"
        row.append(f"{r['map50_95']:.4f} {spread}")
        row += [f"{r['kinds'][k][what]:.{1 if what == 'latency_ms' else 4}f}" for k in kinds
                for what in ("latency_ms", "map50_95")]
        if ref:
            diff, low, high = welch_interval(r["scores"], ref["scores"])
            spread = f"[{100 * low:+.2f}, {100 * high:+.2f}]" if min(r["seeds"], ref["seeds"]) > 1 else "(one seed)"
            row.append("-" if r is ref else f"{100 * diff:+.2f} {spread}")
        rows.append(row)
    return columns, rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = parser(__doc__, data=True, imgsz=256, run_dir="runs/frontier", repeats=50, beside="a CSV and the plot (.png)")
    p.add_argument("--points", nargs="+", type=point, required=True, help="START/POINT=GLOB of each point's seeds")
    p.add_argument("--kinds", nargs="+", default=default_kinds(), help="deployable kinds (onnx first)")
    p.add_argument("--runtime", help="the kind whose latency the plot shows (default: the last of --kinds)")
    p.add_argument("--reference", help="START/POINT every point is compared with")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    a = p.parse_args(argv)
    names = [f"{s}/{n}" for s, n, _ in a.points]
    if len(set(names)) < len(names):
        p.error(f"--points names a point twice: {sorted({n for n in names if names.count(n) > 1})}")
    if a.reference and a.reference not in names:
        p.error(f"--reference {a.reference} is not one of the points {names}")
    if not a.kinds or a.kinds[0] != "onnx":
        p.error("--kinds must start with onnx: the deploy table gives latency against the FP32 ONNX file")
    for kind in a.kinds:
        try:
            Kind.parse(kind).check()
        except ValueError as e:
            p.error(f"--kinds {kind}: {e}")
    a.runtime = a.runtime or a.kinds[-1]
    if a.runtime not in a.kinds:
        p.error(f"--runtime {a.runtime} must be one of --kinds {a.kinds}")
    a.run_dir.mkdir(parents=True, exist_ok=True)
    records = measure(a)
    command = " ".join(shlex.quote(x) for x in ["python", "bench/frontier.py", *(argv or sys.argv[1:])])
    caption = (
        f"The frontier on {a.data} at imgsz {a.imgsz}: mAP50-95 of each point's seeds (FP32, mean and 95% t interval), "
        f"and for each kind the first seed's artifact: batch-1 latency (ms, median of {a.repeats} runs in {a.rounds} "
        f"interleaved rounds) and its own mAP50-95. Commit {commit()}, {cpu()}.\n\n`{command}`"
    )
    columns, rows = table(records, a.kinds, a.reference)
    emit(caption, columns, rows, a.out)
    lines: dict[str, list[dict]] = {}
    for r in records:
        lines.setdefault(r["start"], []).append({**r, "latency_ms": r["kinds"][a.runtime]["latency_ms"]})
    plot = (a.out or a.run_dir / "frontier.md").with_suffix(".png")
    plot_frontier(lines, a.runtime, plot, f"{shown(a.data)}, imgsz {a.imgsz}; {cpu()}")
    if a.out:
        header = ["start", "point", "seeds", "gflops", "params", "map50_95", "low", "high", "scores"]
        header += [f"{k}_{what}" for k in a.kinds for what in ("latency_ms", "map50_95")]
        write_csv(a.out.with_suffix(".csv"), header, [
            [r["start"], r["point"], r["seeds"], r["gflops"], r["params"], r["map50_95"], r["low"], r["high"],
             " ".join(f"{s:.5f}" for s in r["scores"]),
             *(r["kinds"][k][what] for k in a.kinds for what in ("latency_ms", "map50_95"))]
            for r in records
        ])
    print(f"plot: {plot}")
    return records


if __name__ == "__main__":
    main()
