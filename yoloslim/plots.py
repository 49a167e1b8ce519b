"""Plots people would rather see than read: gamma histograms and accuracy against size."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from yoloslim.atomic import atomic_write  # noqa: E402


def gamma_histograms_png(
    gammas: Mapping[str, np.ndarray],
    side_by_side: bool = False,
    bins: int = 100,
    threshold: tuple[str, float] | None = None,
    small: float = 1e-2,
) -> bytes:
    """Histograms of |gamma| for each labelled model (e.g. before / after sparsity training), as PNG bytes (written by
    the caller with the text summary beside them, as one set).

    A linear |gamma| axis from 0 with log counts, overlaid by default or one panel per model with
    `side_by_side`. Each legend entry gives the share of gammas below `small`; `threshold` (a label and a
    value) is drawn as a vertical line, e.g. the gamma threshold of a prune ratio.
    """
    labels = list(gammas)
    hi = max(float(np.max(v)) for v in gammas.values())
    edges = np.linspace(0, hi if hi > 0 else 1, bins + 1)
    n = len(labels) if side_by_side else 1
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False, sharey=True)
    for i, label in enumerate(labels):
        ax = axes[0][i if side_by_side else 0]
        values = gammas[label]
        ax.hist(
            values,
            bins=edges,
            alpha=1.0 if side_by_side else 0.55,
            label=f"{label}: median {np.median(values):.3g}, {np.mean(values < small):.0%} < {small:g}",
        )
        if threshold is not None and (side_by_side or i == 0):
            ax.axvline(
                threshold[1], color="red", linestyle="--", label=f"threshold {threshold[1]:.3g} ({threshold[0]})"
            )
        ax.set_xlim(left=0)
        ax.set_yscale("log")
        ax.set_xlabel("|BN gamma| of prunable channels")
        ax.legend(fontsize=8)
        ax.set_title(label if side_by_side else "BN gamma distribution")
    axes[0][0].set_ylabel("channels")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=120, format="png")
    plt.close(fig)
    return png.getvalue()


# The reference's README table (YOLOv8s on its own single-class set): GFLOPs as a share of its baseline and the
# fine-tuned mAP50-95 change from its baseline in points, at prune ratios 0.2, 0.4 and 0.6.
REFERENCE_YOLOV8S = ((0.71, 1.6), (0.54, 1.3), (0.40, 0.6))


def plot_map_vs_gflops(rows: Sequence[Mapping[str, float]], normal_map: float, path: Path, title: str = "") -> Path:
    """mAP50-95 change from the normal-trained model (pt) against GFLOPs as a share of the unpruned model.

    One point per row (label, gflops share, map before / after fine-tuning), the normal-trained model as its
    own marked point at (1, 0), and the reference's YOLOv8s figures for scale.
    """
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.plot(
        [1.0], [0.0], marker="*", markersize=14, linestyle="", color="black", label=f"normal-trained ({normal_map:.4f})"
    )
    for key, marker, text in (
        ("map_before", "x", "pruned, before fine-tuning"),
        ("map_after", "o", "after fine-tuning"),
    ):
        pts = [(r["gflops"], 100 * (r[key] - normal_map), r["label"]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="-", label=text)
            for x, y, label in pts:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ref = REFERENCE_YOLOV8S
    ax.plot(
        [p[0] for p in ref],
        [p[1] for p in ref],
        marker="s",
        linestyle=":",
        color="grey",
        label="reference YOLOv8s, fine-tuned",
    )
    ax.set_xlabel("GFLOPs (share of the unpruned model)")
    ax.set_ylabel("mAP50-95 change vs normal-trained (pt)")
    ax.set_title(title, fontsize=9)
    return _save(fig, ax, path)


def plot_removal_curve(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    base: float,
    path: Path,
    xlabel: str = "prunable channels removed (%)",
) -> Path:
    """mAP50-95 against the share of channels removed (or of GFLOPs kept) with no training, one line per ranking or
    repair (bench/removal_curve.py), the unremoved model's score as a horizontal line."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.axhline(base, color="grey", linewidth=0.8, label=f"unremoved ({base:.4f})")
    for label, points in curves.items():
        points = sorted(points)
        ax.plot([100 * s for s, _ in points], [m for _, m in points], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mAP50-95, no training")
    return _save(fig, ax, path)


def plot_frontier(
    lines: Mapping[str, Sequence[Mapping[str, Any]]], runtime: str, path: Path, title: str = ""
) -> Path:
    """mAP50-95 against batch-1 latency on `runtime` (left) and against GFLOPs (right): one line per start through
    its points in order of cost, each point its mean over seeds with its 95% interval, dense models as squares
    (the start trained on, unpruned) and pruned ones as circles, each labelled (bench/frontier.py)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for start, points in lines.items():
        points = sorted(points, key=lambda p: p["gflops"])
        for ax, key in zip(axes, ("latency_ms", "gflops"), strict=True):
            line = ax.plot([p[key] for p in points], [p["map50_95"] for p in points], linestyle="-", label=start)[0]
            for p in points:
                low, high = p["map50_95"] - p["low"], p["high"] - p["map50_95"]
                marker = "s" if p["dense"] else "o"
                ax.errorbar(p[key], p["map50_95"], yerr=[[low], [high]], marker=marker, color=line.get_color())
                ax.annotate(p["point"], (p[key], p["map50_95"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[0].set_xlabel(f"batch-1 latency on {runtime} (ms)")
    axes[1].set_xlabel("GFLOPs")
    axes[0].set_ylabel("mAP50-95 (mean over seeds, 95% interval)")
    fig.suptitle(title, fontsize=9)
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
    return _save(fig, axes[0], path)


def _save(fig: plt.Figure, ax: plt.Axes, path: Path) -> Path:
    """Grid, legend and layout of a one-panel plot; written atomically as PNG."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
    return path
