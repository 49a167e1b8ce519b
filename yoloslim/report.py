"""Tables and plots: sizes (Ultralytics' own counters), the per-layer prune report, the pipeline's results and deploy
tables, and its accuracy-vs-size plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn
from ultralytics.utils.torch_utils import get_flops, get_num_params

from yoloslim.atomic import csv_text
from yoloslim.plots import plot_map_vs_gflops
from yoloslim.prune import PrunePlan
from yoloslim.reconstruct import ConvFit
from yoloslim.surgery import LayerChange


@dataclass(frozen=True)
class ModelSize:
    """Parameter count and GFLOPs at one image size."""

    params: int
    gflops: float
    imgsz: int

    @classmethod
    def of(cls, model: nn.Module, imgsz: int) -> ModelSize:
        """Measure `model` with Ultralytics' `get_num_params` and `get_flops` (thop)."""
        return cls(get_num_params(model), get_flops(model, imgsz), imgsz)

    def __str__(self) -> str:
        return f"{self.params / 1e6:.3f} M params, {self.gflops:.2f} GFLOPs at imgsz {self.imgsz}"


def layer_table(changes: Sequence[LayerChange]) -> str:
    """A fixed-width text table of every channel group: channels before and after, and which were prunable."""
    width = max(len(c.name) for c in changes)
    lines = [f"{'layer':<{width}}  {'before':>6}  {'after':>6}  {'kept':>6}  prunable"]
    for c in changes:
        lines.append(
            f"{c.name:<{width}}  {c.before:>6}  {c.after:>6}  {c.after / c.before:>6.1%}  {'yes' if c.prunable else 'no'}"
        )
    return "\n".join(lines)


def prune_summary(before: ModelSize, after: ModelSize, plan: PrunePlan, target: tuple[str, float] | None) -> str:
    """The summary lines of a prune report: what was asked (a ratio or a target), what was reached."""
    gflops = after.gflops / before.gflops if before.gflops else math.nan
    params = after.params / before.params
    if target is None:
        asked = f"requested ratio {plan.ratio:.3f}"
    else:
        kind, value = target
        asked = f"target {kind} {value:.3f}x, reached {gflops if kind == 'gflops' else params:.3f}x"
    largest = "none" if plan.max_removed == -math.inf else f"{plan.max_removed:.6g}"
    return "\n".join(
        [
            f"{asked}, removed {plan.removed:.3f} of prunable channels (equivalent channel ratio), importance "
            f"threshold {plan.threshold:.6g}, largest |gamma| removed {largest}",
            f"params  {before.params:,} -> {after.params:,} ({params:.3f}x)",
            f"GFLOPs  {before.gflops:.3f} -> {after.gflops:.3f} ({gflops:.3f}x) at imgsz {after.imgsz}"
            if before.gflops
            else "GFLOPs  unavailable (thop failed)",
        ]
    )


def fit_table(fits: Sequence[ConvFit]) -> str:
    """The reconstruction's per-conv table: input channels kept, and the output error on the calibration images
    before and after the least-squares fit (squared error over the output's variance)."""
    width = max(len(f.name) for f in fits)
    lines = [
        "reconstruction (least squares on the calibration images; error = squared error / variance of the output)",
        f"{'conv':<{width}}  {'inputs':>9}  {'error before':>12}  {'after':>8}",
    ]
    for f in fits:
        inputs = f"{f.inputs[1]}/{f.inputs[0]}"
        lines.append(f"{f.name:<{width}}  {inputs:>9}  {f.before:>12.4f}  {f.after:>8.4f}")
    return "\n".join(lines)


def layer_csv(changes: Sequence[LayerChange]) -> str:
    """The per-layer report as CSV text (one row per channel group)."""
    return csv_text(list(asdict(changes[0])), (asdict(c) for c in changes))


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]) + "\n"


DEPLOY_FIELDS = ["model", "kind", "gflops", "params", "size_mb", "latency_ms", "map50_95"]  # a deploy row's figures
DEPLOY_COLUMNS = ["model", "kind", "GFLOPs x", "MB", "latency ms", "latency x", "mAP50-95", "vs FP32 (pt)"]


def deploy_rows(rows: Sequence[dict]) -> list[list[str]]:
    """The deploy table's cells: latency as a share of the first model's FP32 ONNX file (the unpruned baseline), and
    each artifact's mAP50-95 against the same model's FP32 ONNX file (what quantization or the runtime costs)."""
    base = next(r for r in rows if r["kind"] == "onnx")
    fp32 = {r["model"]: r["map50_95"] for r in rows if r["kind"] == "onnx"}
    cells = []
    for r in rows:
        vs = f"{100 * (r['map50_95'] - fp32[r['model']]):+.2f}" if r["model"] in fp32 else "-"
        cells.append(
            [
                r["model"],
                r["kind"],
                f"{r['gflops'] / base['gflops']:.3f}",
                f"{r['size_mb']:.2f}",
                f"{r['latency_ms']:.2f}",
                f"{r['latency_ms'] / base['latency_ms']:.3f}",
                f"{r['map50_95']:.4f}",
                vs,
            ]
        )
    return cells


def deploy_markdown(table: Sequence[dict], imgsz: int) -> str:
    """The pipeline's deploy table with its caption."""
    caption = (
        f"Deployable artifacts of every row (imgsz {imgsz}, batch-1 CPU latency side by side; x = share of the "
        "first row's FP32 ONNX latency; mAP50-95 of each artifact itself, and its change from the same model's "
        "FP32 ONNX file)"
    )
    return f"{caption}\n\n{markdown_table(DEPLOY_COLUMNS, deploy_rows(table))}"


RESULTS_COLUMNS = [
    "params (M)",
    "GFLOPs",
    "mAP50 pruned",
    "mAP50-95 pruned",
    "mAP50 fine-tuned",
    "mAP50-95 fine-tuned",
    "ONNX MB",
    "ORT ms/img",
    "mAP50-95 change vs the normal-trained model (pt)",
]


def results_markdown(
    rows: Sequence[dict], normal: dict[str, float], point: str, imgsz: int, note: str, skip_first: bool = False
) -> str:
    """The pipeline's results (or comparisons) table: sizes and latency with their ratio to the first row (the
    unpruned sparse model; left out of the table with `skip_first`) in brackets, mAP with its change from it, and
    the last column the change from the `normal`-trained model, the user's starting point; then the legend and
    `note`."""
    base = rows[0]

    def ratio(row: dict, key: str, fmt: str) -> str:
        return f"{row[key]:{fmt}} ({row[key] / base[key]:.2f}x)"

    def pts(row: dict, key: str) -> str:
        if row[key] is None:
            return "-"
        return f"{row[key]:.4f}" if row is base else f"{row[key]:.4f} ({100 * (row[key] - base[key]):+.1f})"

    def change(row: dict) -> str:
        final = row["map50_95_after"] if row["map50_95_after"] is not None else row["map50_95_before"]
        return f"{100 * (final - normal['map50_95']):+.1f}"

    cells = [
        [
            r["point"],
            f"{r['params'] / 1e6:.3f} ({r['params'] / base['params']:.2f}x)",
            ratio(r, "gflops", ".3f"),
            *(pts(r, k) for k in ("map50_before", "map50_95_before", "map50_after", "map50_95_after")),
            ratio(r, "onnx_mb", ".2f"),
            ratio(r, "latency_ms", ".2f"),
            change(r),
        ]
        for r in (rows[1:] if skip_first else rows)
    ]
    legend = (
        "mAP: absolute, with the change from the unpruned model (first row: the sparse model of the smallest point, "
        "or the normal-trained one when that row is one-shot) in points in brackets; the last column: fine-tuned "
        "(else pruned) mAP50-95 minus the "
        f"normal-trained model's ({normal['map50_95']:.4f}); latency: onnxruntime CPU, batch 1, imgsz {imgsz}, "
        "median of interleaved runs."
    )
    return f"{markdown_table([point, *RESULTS_COLUMNS], cells)}\n{legend}\n{note}\n"


def results_plot(rows: Sequence[dict], normal: dict[str, float], path: Path, title: str) -> Path:
    """mAP50-95 change from the normal-trained model against the GFLOPs share of each row (plots.py)."""
    points = [
        {
            "label": r["point"],
            "gflops": r["gflops"] / rows[0]["gflops"],
            "map_before": r["map50_95_before"],
            "map_after": r["map50_95_after"],
        }
        for r in rows
    ]
    return plot_map_vs_gflops(points, normal["map50_95"], path, title=title)
