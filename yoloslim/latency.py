"""A latency budget: find the GFLOPs share whose pruned model runs at a share `ratio` of the unpruned model's latency
on a runtime (onnxruntime CPU, or OpenVINO), so that one number (`--target-latency 0.5`) drives pruning, or sparse
training through its `target_gflops`. The number can also be measured: the latency of another model
(`--target-latency-of yolov8n.pt`, timed beside the unpruned one) as a share of the unpruned model's, which answers
"prune this model to run as fast as that one" (issue 32).

Latency does not follow GFLOPs one for one: activations, concatenations and the box decode cost time that GFLOPs do
not count (docs/lab/deploy.md, "Where the latency goes"). The search measures instead of assuming. It brackets the
answer between GFLOPs shares whose measured ratios lie on either side of `ratio` and narrows the bracket by
interpolation (regula falsi, bisecting when one end stays put, so a curve that bends cannot stall it), starting from
`ratio` itself. Each probe prunes with the same `Pruner` (so the model measured is the model that will be saved),
exports it, and times it side by side with the unpruned model in interleaved rounds; the ratio of the medians
cancels most of a shared machine's drift. It stops when a probe lands within `tolerance` (5%) of `ratio`, or says
what the closest reachable ratio is.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from ultralytics.utils import LOGGER

from yoloslim.artifacts import export
from yoloslim.checkpoint import load_model, save_checkpoint
from yoloslim.deploy import Kind, Timer, runner, side_by_side_latency_ms
from yoloslim.prune import Pruner
from yoloslim.settings import check_latency_target
from yoloslim.sizes import fit_imgsz

TOLERANCE = 0.05  # a probe within 5% of the asked ratio ends the search
PROBES = 8


@dataclass
class LatencySearch:
    """The probes of a search: GFLOPs share -> measured latency ratio, and the answer (only measured probes: the
    unpruned model's 1.0 at share 1 bounds the search but is never an answer, unless the whole latency is asked)."""

    ratio: float
    probes: dict[float, float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[float, float]:
        """The probe whose latency ratio is closest to the target: (GFLOPs share, latency ratio)."""
        return min(self.probes.items(), key=lambda p: (abs(p[1] - self.ratio), -p[0]))

    def landed(self, tolerance: float = TOLERANCE) -> bool:
        """Whether the best probe's latency ratio is within `tolerance` (relative) of the target."""
        return abs(self.best[1] / self.ratio - 1) <= tolerance + 1e-9


def search_gflops(
    ratio: float,
    latency_ratio: Callable[[float], float],
    floor: float,
    tolerance: float = TOLERANCE,
    probes: int = PROBES,
) -> LatencySearch:
    """The GFLOPs share in [`floor`, 1] whose measured `latency_ratio(share)` (increasing in share, 1 at share 1) is
    within `tolerance` of `ratio`. Raises ValueError, with the ratio the floors reach, when they stop short of it;
    warns with the closest probe when `probes` run out (timing too noisy to land)."""
    ratio = check_latency_target(ratio)
    if ratio == 1:  # the whole latency: the model as it is, nothing to measure
        return LatencySearch(ratio, {1.0: 1.0})
    search = LatencySearch(ratio)
    low, high = None, (1.0, 1.0)  # the probes closest to the target from below and from above (share, ratio)
    share, moved, repeated = max(ratio, floor), "", 0
    for _ in range(probes):
        measured = search.probes[share] = latency_ratio(share)
        LOGGER.info(f"yoloslim: latency search: {share:.3f}x GFLOPs runs at {measured:.3f}x the latency")
        if search.landed(tolerance):
            return search
        if measured > ratio and share <= floor + 1e-9:
            raise ValueError(
                f"target latency {ratio:g} cannot be reached on this runtime: the per-layer floors run at "
                f"{measured:.3f}x ({share:.3f}x GFLOPs); raise the target (or lower min_keep)"
            )
        side = "high" if measured > ratio else "low"
        if side == "high":
            previous, high = high, (share, measured)
        else:
            low = (share, measured)
        repeated, moved = (repeated + 1 if side == moved else 0), side
        if low is None:  # nothing below the target yet: extrapolate the last two probes, not past the floors
            (s0, r0), (s1, r1) = high, previous
            share = max(floor, s0 + (ratio - r0) * (s1 - s0) / (r1 - r0) if r1 > r0 else s0 * ratio / r0)
            continue
        (s0, r0), (s1, r1) = low, high
        interpolate = repeated < 2 and r1 != r0  # regula falsi; bisect when one end has stayed put
        share = s0 + (ratio - r0) * (s1 - s0) / (r1 - r0) if interpolate else (s0 + s1) / 2
    share, reached = search.best
    LOGGER.warning(
        f"yoloslim: latency search ended at {reached:.3f}x the latency ({share:.3f}x GFLOPs), not within "
        f"{tolerance:.0%} of {ratio:g} after {probes} probes: the timing is too noisy here; using the closest"
    )
    return search


class LatencyProbe:
    """Latency ratios against the unpruned model of `pruner` on `runtime`: of that model pruned to a GFLOPs share
    (`share`, the search's probe: the model measured is the model that will be saved) and of another checkpoint
    (`checkpoint`, a model to run as fast as). Each is exported with Ultralytics' exporter (in `work`, which the
    caller removes) and timed side by side with the unpruned model (batch 1, interleaved rounds, medians); the
    unpruned model is exported once."""

    def __init__(
        self,
        pruner: Pruner,
        imgsz: int,
        work: Path,
        *,
        runtime: str = "onnx",
        rounds: int = 5,
        repeats: int = 50,
        timer: Timer | None = None,
    ) -> None:
        self.kind = Kind(runtime)
        self.kind.check()
        self.pruner, self.work, self.rounds, self.repeats = pruner, Path(work), rounds, repeats
        self.imgsz = fit_imgsz(imgsz, pruner.model)
        self.timer = {"timer": timer} if timer else {}
        self.unpruned = runner(_exported(pruner.model, self.work / "unpruned", self.imgsz, self.kind), self.kind)

    def share(self, share: float) -> float:
        """The latency ratio of the model pruned to `share` of its GFLOPs (`latency_ratio` of `search_gflops`)."""
        copy = deepcopy(self.pruner)  # the model and the pruner's view of it, copied together
        copy.apply(self.pruner.plan_budget("gflops", share))
        return self._ratio(copy.model, f"{share:.6f}")

    def checkpoint(self, weights: Path) -> float:
        """The latency ratio of the checkpoint `weights`, exported at the same image size."""
        return self._ratio(load_model(weights)[0], "reference")

    def _ratio(self, model: nn.Module, name: str) -> float:
        folder = self.work / name
        try:
            candidate = runner(_exported(model, folder, self.imgsz, self.kind), self.kind)
            ms = side_by_side_latency_ms(
                {"u": self.unpruned, "c": candidate}, self.imgsz, self.rounds, self.repeats, **self.timer
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return ms["c"] / ms["u"]


def _exported(model: nn.Module, folder: Path, imgsz: int, kind: Kind) -> Path:
    """`model` exported to `kind` under `folder` (via a checkpoint, as users export)."""
    return export(save_checkpoint(model, folder / "model.pt"), imgsz=imgsz, kind=kind)["artifact"]
