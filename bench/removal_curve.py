r"""Ranking quality with no training: mAP after removing the lowest-ranked share of prunable channels.

For each importance and share, a copy of the checkpoint gets gamma and beta of the chosen channels set to 0 (what
sparsity training's zeroing converges to), and, with `--pruned`, is also pruned at that share by `prune_model` (the
removed channels' act(beta) folded into their consumers); each is validated. `random` (over `--seeds`) is the
control: a ranking worse than random removal is worse than no ranking. The channel choice is the product's own
(`Pruner.plan`: per-layer floors, equal C2f halves); Taylor scores come from 8 batches of the training images.

    python bench/removal_curve.py --weights runs/v8s-ships/normal/weights/best.pt --data datasets/ships/ships.yaml \
        --imgsz 256 --out docs/removal_ships_v8s.md

With `--budgets`, the train-free repair instead: the checkpoint pruned by Taylor to each GFLOPs share (round_to 8, as
the commands prune; `--min-keep` gives other per-layer floors, a row group each) and validated as cut (`taylor`: the
fold alone), reconstructed by least squares (`taylor+recon`), reconstructed then BN statistics re-estimated
(`taylor+recon+bn`), and BN statistics alone (`taylor+bn`), all from the first `--calib-images` training images
(reconstruct.py). Several `--calib-images` give one row each per arm.
`--at-conf 0.25` also scores every model on the boxes `predict` keeps by default (validation's own threshold, 0.001,
ranks every box, so a cut whose scores all fell below 0.25 still scores there but detects nothing when deployed).

    python bench/removal_curve.py --weights runs/starts/v8s/weights/last.pt --data datasets/hardhat/hardhat.yaml \
        --imgsz 256 --budgets 0.8 0.7 0.6 0.5 0.4 --out runs/repair-v8s.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, shown, write_csv

from yoloslim import Pruner, prune_model, steps
from yoloslim.checkpoint import load_model, save_checkpoint
from yoloslim.plots import plot_removal_curve
from yoloslim.reconstruct import Reconstruction, calibration_images, recalibrate_bn
from yoloslim.settings import DEFAULT_CALIB_IMAGES, SCRIPT_ROUND_TO, Ranking
from yoloslim.taylor import estimate_taylor


REPAIRS = ("taylor", "taylor+bn", "taylor+recon", "taylor+recon+bn")


def random_importance(seed: int):
    """Scores drawn at random (the control), reproducible per seed."""
    g = torch.Generator().manual_seed(seed)
    return lambda pruner, unit: torch.rand(unit.size, generator=g)


@torch.no_grad()
def zeroed_copy(weights: Path, importance, share: float) -> torch.nn.Module:
    """The checkpoint's model with gamma and beta of the `share` lowest-ranked prunable channels set to 0."""
    model, _ = load_model(weights)
    pruner = Pruner(model, importance=importance)
    plan = pruner.plan(share)
    for g in pruner.graph.prunable:
        if removed := plan.dropped(g):
            pruner.modules[g.name].weight[removed] = 0
            pruner.modules[g.name].bias[removed] = 0
    return model


def repaired_models(model, taylor, budget: float, floor: float, images: torch.Tensor, repairs: list[str]):
    """The model pruned to `budget` GFLOPs by `taylor` with the per-layer floor `floor`, then each of `repairs`
    (name, model), made in turn."""
    ranking = Ranking(round_to=SCRIPT_ROUND_TO, min_keep=floor)
    cut, plan, _ = prune_model(model, target=("gflops", budget), ranking=ranking, importance=taylor)
    if "taylor" in repairs:
        yield "taylor", cut
    if "taylor+bn" in repairs:
        bn = deepcopy(cut)
        recalibrate_bn(bn, images)
        yield "taylor+bn", bn
    if "taylor+recon" in repairs or "taylor+recon+bn" in repairs:
        recon = deepcopy(cut)
        Reconstruction(model, recon, plan.keep).run(images)
        if "taylor+recon" in repairs:
            yield "taylor+recon", recon
        if "taylor+recon+bn" in repairs:
            recalibrate_bn(recon, images)
            yield "taylor+recon+bn", recon


def repair_curve(a: argparse.Namespace, model: nn.Module, base: float, base_at: float | None) -> None:
    """mAP50-95 of each repair at each GFLOPs budget (per calibration size and per-layer floor), no training, and at
    `--at-conf` (the unpruned model's: `base_at`) if asked; the table, CSV and plot."""
    taylor = estimate_taylor(model, a.data, a.imgsz)
    results: dict[tuple[str, int, float, float], float] = {}
    seconds: dict[tuple[int, float, float], float] = {}
    arms = [*a.repairs, *(f"{name} @{a.at_conf:g}" for name in a.repairs if a.at_conf)]
    groups = [(n, floor) for n in a.calib_images for floor in a.min_keep]
    for n in a.calib_images:
        images = calibration_images(model, a.data, a.imgsz, n)
        for floor in a.min_keep:
            for budget in a.budgets:
                start = time.perf_counter()
                for name, repaired in repaired_models(model, taylor, budget, floor, images, a.repairs):
                    if name.startswith("taylor+recon") and (n, floor, budget) not in seconds:
                        seconds[(n, floor, budget)] = time.perf_counter() - start
                    folder = a.run_dir / f"n{n}-k{floor:g}-{budget:g}"
                    w = save_checkpoint(repaired, folder / f"{name}.pt")
                    metrics = steps.validate(w, data=a.data, imgsz=a.imgsz, project=folder, name=name)
                    results[(name, n, floor, budget)] = metrics["map50_95"]
                    if a.at_conf:
                        at = steps.validate(w, data=a.data, imgsz=a.imgsz, project=folder, name=name, conf=a.at_conf)
                        results[(f"{name} @{a.at_conf:g}", n, floor, budget)] = at["map50_95"]
                    start = time.perf_counter()
    columns = ["repair", "images", "min_keep", *(f"{b:g}x" for b in a.budgets)]
    rows = [
        [
            name,
            n,
            f"{floor:g}",
            *(f"{(v := results[(name, n, floor, b)]):.4f} ({100 * (v - reference):+.1f})" for b in a.budgets),
        ]
        for n, floor in groups
        for name in arms
        for reference in [base_at if "@" in name else base]
    ]
    if seconds:
        rows += [
            ["reconstruction s", n, f"{floor:g}", *(f"{seconds[(n, floor, b)]:.0f}" for b in a.budgets)]
            for n, floor in groups
        ]
    caption = (
        f"mAP50-95 (pt vs unpruned) of {shown(a.weights)} ({a.data}, imgsz {a.imgsz}; unpruned {base:.4f}"
        + (f", {base_at:.4f} at conf {a.at_conf:g}" if a.at_conf else "")
        + f") pruned by Taylor to each GFLOPs share, round_to {SCRIPT_ROUND_TO}, each per-layer floor, no training; "
        "repairs from the first N training images; '@c': scored on the boxes of score c and above"
    )
    emit(caption, columns, rows, a.out)
    if a.out:
        records = [[name, n, floor, b, f"{v:.4f}"] for (name, n, floor, b), v in results.items()]
        write_csv(a.out.with_suffix(".csv"), ["repair", "images", "min_keep", "gflops", "map50_95"], records)
        curves = {
            f"{name} (N={n}, min_keep {floor:g})": [(b, results[(name, n, floor, b)]) for b in a.budgets]
            for n, floor in groups
            for name in a.repairs
        }
        xlabel = "GFLOPs kept (% of the unpruned model)"
        plot_removal_curve(curves, base, a.out.with_suffix(".png"), xlabel=xlabel)


def share_curve(a: argparse.Namespace, model: nn.Module, base: float) -> None:
    """The removal curve: each criterion zeroes (and with `--pruned` also prunes) each share of the channels."""
    taylor = estimate_taylor(model, a.data, a.imgsz) if "taylor" in a.importance else None
    results: dict[tuple[str, str, float], list[float]] = {}
    for name in a.importance:
        for share in a.shares:
            for seed in a.seeds if name == "random" else [0]:
                importance = {"taylor": taylor, "random": random_importance(seed)}.get(name, name)
                tag = f"{name}-{seed}-{share:g}"
                zeroed = save_checkpoint(zeroed_copy(a.weights, importance, share), a.run_dir / tag / "zeroed.pt")
                kinds = [("zeroed", zeroed)]
                if a.pruned and name != "random":  # the same scores: Taylor's are estimated once
                    pruned, _, _ = prune_model(model, share, importance=importance)
                    kinds.append(("pruned", save_checkpoint(pruned, a.run_dir / tag / "pruned.pt")))
                for kind, w in kinds:
                    score = steps.validate(w, data=a.data, imgsz=a.imgsz, project=a.run_dir / tag, name=kind)[
                        "map50_95"
                    ]
                    results.setdefault((name, kind, share), []).append(score)
    columns = ["importance", "model", *(f"{s:.0%}" for s in a.shares)]
    rows = []
    for name in a.importance:
        for kind in ("zeroed", "pruned"):
            cells = [results.get((name, kind, s)) for s in a.shares]
            if all(cells):
                text = [
                    f"{statistics.mean(c):.4f}" + (f" ({min(c):.4f}-{max(c):.4f})" if len(c) > 1 else "") for c in cells
                ]
                rows.append([name, kind, *text])
    caption = (
        f"mAP50-95 of {shown(a.weights)} ({a.data}, imgsz {a.imgsz}; unremoved {base:.4f}) after removing each share of the "
        f"prunable channels, no training; random: mean (min-max) over seeds {a.seeds}"
    )
    emit(caption, columns, rows, a.out)
    if a.out:
        records = [[*key, " ".join(f"{s:.4f}" for s in scores)] for key, scores in results.items()]
        write_csv(a.out.with_suffix(".csv"), ["importance", "model", "share", "seed_scores"], records)
        curves = {
            f"{n} {k}": [(s, statistics.mean(v)) for (n2, k2, s), v in results.items() if (n2, k2) == (n, k)]
            for (n, k, _) in results
        }
        plot_removal_curve(curves, base, a.out.with_suffix(".png"))


def main() -> None:
    p = parser(__doc__, data=True, imgsz=256, run_dir="runs/bench-removal", beside="a CSV and a PNG plot")
    p.add_argument("--weights", type=Path, required=True, help="a trained (normal, not sparse) checkpoint")
    p.add_argument("--shares", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3])
    p.add_argument("--importance", nargs="+", default=["gamma", "taylor", "random"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the random control")
    p.add_argument("--pruned", action="store_true", help="also prune at each share (fold on) and validate")
    p.add_argument("--budgets", type=float, nargs="+", help="GFLOPs shares: compare the repairs instead (see above)")
    p.add_argument("--calib-images", type=int, nargs="+", default=[DEFAULT_CALIB_IMAGES], help="with --budgets")
    p.add_argument("--repairs", nargs="+", choices=REPAIRS, default=list(REPAIRS), help="with --budgets")
    p.add_argument("--at-conf", type=float, help="with --budgets: also score each model at this threshold (0.25)")
    p.add_argument(
        "--min-keep", type=float, nargs="+", default=[Ranking().min_keep], help="with --budgets: per-layer floors"
    )
    a = p.parse_args()
    model, _ = load_model(a.weights)
    base = steps.validate(a.weights, data=a.data, imgsz=a.imgsz, project=a.run_dir, name="base")["map50_95"]
    if a.budgets:
        at = a.at_conf and steps.validate(
            a.weights, data=a.data, imgsz=a.imgsz, project=a.run_dir, name="base", conf=a.at_conf
        )
        return repair_curve(a, model.float(), base, at["map50_95"] if at else None)
    share_curve(a, model, base)


if __name__ == "__main__":
    main()
