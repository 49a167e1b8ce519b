"""Channel pruning: rank the channels, choose the ones to keep (the plan), then have `surgery.py` slice the weights.

Network slimming (Liu et al. 2017, arXiv:1708.06519) removes the channels whose BN scale factor is
small, with one global threshold over all prunable channels; removing a conv's filters together with
the matching input columns of its consumers follows Li et al. 2016 (arXiv:1608.08710).

`Pruner` is one object with a swappable importance criterion (as in Torch-Pruning). `Pruner.plan`
returns a `PrunePlan` (the kept channels as plain data, as timm's `_prune.py` stores a pruned
structure), and `Pruner.apply` hands it to the surgery (`surgery.py`) that the channel graph (`channels.py`)
describes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn

from yoloslim.channels import ChannelGraph, ChannelGroup, build_graph
from yoloslim.cost import CostModel, prunable_units
from yoloslim.importance import Importance, Source, gamma_importance, make_importance
from yoloslim.settings import Ranking, check_budget, check_ratio
from yoloslim.surgery import LayerChange, cut, plan_masks

@dataclass(frozen=True)
class PrunePlan:
    """The channels each group keeps (sorted indices), the global threshold that chose them (the lowest
    importance kept), the ratio asked for (for a budget plan: the share it removes), the largest |gamma|
    removed (near 0 when only sparse-trained channels go, whatever the importance) and the share of
    prunable channels actually removed (floors and equal C2f halves can keep marked ones)."""

    keep: dict[str, list[int]]
    threshold: float
    ratio: float
    max_removed: float = -math.inf
    removed: float = 0.0  # the share of prunable channels removed (a residual stream's channel counts once)
    widths: dict[str, int] | None = None  # every group's width in the model planned on: a plan fits only those

    def dropped(self, group: ChannelGroup) -> list[int]:
        """The channels of `group` that the plan removes (sorted indices)."""
        return sorted(set(range(group.size)) - set(self.keep[group.name]))


class Pruner:
    """Prunes the channels of an Ultralytics `DetectionModel` (or its segment, pose, OBB subclasses) in place.

    Args:
        model: the model to prune (modified by `apply`; pass a copy to keep the original).
        ranking: the criterion's name, the residual streams, `round_to` (counts in multiples of this, capped at the
            layer width) and `min_keep` (the per-layer floor, a share of the layer's channels, at least one
            channel: every ratio in [0, 1) works and no layer is ever emptied), checked when it was made.
        importance: the criterion to use instead of `ranking.importance`: one already made (a `TaylorImportance`
            estimated or fed elsewhere, the zeroing's) or another name. A name is made by `importance.make_importance`
            from the model alone: Taylor's needs data, so pass it made (`taylor.estimate_taylor`).
        fold: fold each removed channel's constant output `act(beta)` into its consumers (the next BN's
            running mean, or a head conv's bias), which makes removing zero-gamma channels exact for 1x1
            consumers and close for the others.

    Raises:
        ValueError: a criterion that needs data, or weights on the meta device. UnsupportedModuleError: a block no
            rule covers.

    Example:
        >>> pruner = Pruner(model, Ranking(importance="gamma", round_to=8))
        >>> changes = pruner.apply(pruner.plan_budget("gflops", 0.4))  # model now keeps 40% of its GFLOPs
    """

    def __init__(
        self,
        model: nn.Module,
        ranking: Ranking = Ranking(),
        importance: Importance | str | None = None,
        fold: bool = True,
    ) -> None:
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise ValueError("the model's weights are on the meta device (never loaded): load them before pruning")
        self.model, self.ranking, self.fold = model, ranking, fold
        self.graph: ChannelGraph = build_graph(model, ranking.streams)  # an unsupported model says so first
        self.units = prunable_units(self.graph)
        self.modules = dict(model.named_modules())
        source = Source(model, streams=ranking.streams)
        self.importance = make_importance(ranking.importance if importance is None else importance, source)

    @property
    def round_to(self) -> int:
        """Channel counts in multiples of this (the ranking's)."""
        return self.ranking.round_to

    @property
    def min_keep(self) -> float:
        """The per-layer floor (the ranking's)."""
        return self.ranking.min_keep

    @cached_property
    def cost(self) -> CostModel:
        """The model's cost as a function of kept counts (measured on first use, at the model's full width)."""
        return CostModel(self.model, self.graph, self.units)

    @cached_property
    def relative_cost(self) -> torch.Tensor:
        """GFLOPs of one channel of each unit, divided by the mean over all prunable channels."""
        per = self.cost.per_channel("gflops").float()
        # a training-only branch (Proto26.semseg) costs nothing at inference: rank it as the cheapest real channel
        per = torch.where(per > 0, per, per[per > 0].min() if (per > 0).any() else torch.ones(()))
        sizes = torch.tensor([u.size for u in self.units], dtype=torch.float32)
        return per / ((per * sizes).sum() / sizes.sum())

    def gamma(self, bn: str) -> torch.Tensor:
        """|gamma| of a BN."""
        return self.modules[bn].weight.detach().abs().float().cpu()

    def scores(self) -> list[torch.Tensor]:
        """The importance of every channel of every prunable unit (forward order)."""
        return [self.importance(self, u).float().cpu() for u in self.units]

    def plan(self, ratio: float) -> PrunePlan:
        """Mark the `ratio` lowest-scoring prunable channels globally; keep the rest, within floors and rounding.

        Channels are ranked rather than compared with the threshold value, so ties (e.g. an untrained
        model whose gammas are all 1) still remove `ratio` of the channels. The threshold reported is
        the score of the lowest channel kept.
        """
        ratio = check_ratio(ratio)
        scores = self.scores()
        return self._plan_lowest(scores, self._order(scores), int(ratio * self.n_channels), ratio)

    def plan_share(self, share: float) -> PrunePlan:
        """The plan that removes the fewest channels but at least `share` of them (floors and rounding included).

        `plan(ratio)` can remove less than `ratio` where floors or equal C2f halves keep marked channels;
        this searches the number of marked channels instead, so the share removed is a guarantee.
        """
        share = check_ratio(share)
        if share > (most := self.max_share()):
            raise ValueError(
                f"removing {share:.1%} of the prunable channels is not possible: the per-layer floors "
                f"(min_keep={self.min_keep:g}, round_to={self.round_to}) allow at most {most:.1%}"
            )
        wanted = math.ceil(share * self.n_channels - 1e-9)
        return self._search(lambda counts: self.n_channels - sum(counts) >= wanted, share)

    def plan_budget(self, kind: str, target: float) -> PrunePlan:
        """The plan that removes the fewest channels but leaves at most `target` of the unpruned model's
        GFLOPs (`kind="gflops"`) or parameters (`kind="params"`): AtomNAS-style, the ranking is cut where
        the cost of what remains meets the budget (Mei et al. 2020, arXiv:1912.09640)."""
        target = check_budget(kind, target)
        if target < (least := self.min_cost_share(kind)):
            raise ValueError(
                f"target {kind}={target:g} is below what the per-layer floors allow: the smallest reachable is "
                f"{least:.3f} (min_keep={self.min_keep:g}, round_to={self.round_to}); raise the target or lower min_keep"
            )
        plan = self._search(lambda counts: self.cost.share(counts, kind) <= target + 1e-12, 0.0)
        return replace(plan, ratio=plan.removed)

    def min_cost_share(self, kind: str) -> float:
        """The smallest share of the `kind` cost that the per-layer floors let any plan reach."""
        return self.cost.share(self._floors(), kind)

    def live_cost_share(self, kind: str, small: float = 1e-2) -> float:
        """The `kind` cost share kept by the channels whose score is at least `small` (floors included):
        what pruning every channel below `small` would leave."""
        return self.cost.share([self._bounded(int((s >= small).sum()), len(s)) for s in self.scores()], kind)

    def cost_share(self, plan: PrunePlan, kind: str) -> float:
        """The `kind` cost of `plan` as a share of the unpruned model's (convs only, see `cost.py`)."""
        return self.cost.share(self._counts(plan), kind)

    @property
    def n_channels(self) -> int:
        """How many prunable channels the model has (a residual stream's channel counts once)."""
        return sum(u.size for u in self.units)

    def max_share(self) -> float:
        """The largest share of prunable channels the per-layer floors let any plan remove."""
        return 1 - sum(self._floors()) / self.n_channels

    def _floors(self) -> list[int]:
        """Per unit, the fewest channels it can keep."""
        return [self._bounded(0, u.size) for u in self.units]

    def _counts(self, plan: PrunePlan) -> list[int]:
        """Per unit, the channels `plan` keeps."""
        counts = []
        for unit in self.units:
            bn, offset = unit.members[0]
            counts.append(sum(1 for i in plan.keep[bn] if offset <= i < offset + unit.size))
        return counts

    def _search(self, fits: Callable[[list[int]], bool], ratio: float) -> PrunePlan:
        """The plan marking the fewest lowest-ranked channels whose kept counts `fits` (monotone in the count)."""
        scores = self.scores()
        order = self._order(scores)
        lo, hi = 0, self.n_channels - 1
        while lo < hi:  # the kept counts never grow as more channels are marked
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(self._kept(scores, order, mid)) else (mid + 1, hi)
        return self._plan_lowest(scores, order, lo, ratio)

    @staticmethod
    def _order(scores: list[torch.Tensor]) -> torch.Tensor:
        """All prunable channels (flat, in graph order), lowest score first; ties keep graph order."""
        return torch.cat(scores).argsort(stable=True)

    def _kept(self, scores: list[torch.Tensor], order: torch.Tensor, n_remove: int) -> list[int]:
        """Per unit, the channels it keeps when the `n_remove` lowest are marked (twins keep the larger count)."""
        below = torch.zeros(len(order), dtype=torch.bool)
        below[order[: min(n_remove, len(order) - 1)]] = True
        unmarked = [int((~b).sum()) for b in below.split([len(s) for s in scores])]
        return [
            self._bounded(max(unmarked[u], unmarked[unit.twin] if unit.twin >= 0 else 0), unit.size)
            for u, unit in enumerate(self.units)
        ]

    def _plan_lowest(self, scores: list[torch.Tensor], order: torch.Tensor, n_remove: int, ratio: float) -> PrunePlan:
        """Mark the `n_remove` lowest-scoring channels; each unit keeps its unmarked ones, within its floor."""
        flat = torch.cat(scores)
        n_remove = min(n_remove, len(flat) - 1)
        keep = {g.name: list(range(g.size)) for g in self.graph.groups.values()}
        for g in self.graph.prunable:
            keep[g.name] = []
        max_removed = -math.inf
        counts = self._kept(scores, order, n_remove)
        for unit, score, k in zip(self.units, scores, counts, strict=True):
            kept = score.topk(k).indices
            for bn, offset in unit.members:
                keep[bn] += (kept + offset).tolist()
            if k < unit.size:
                removed = torch.ones(unit.size, dtype=torch.bool)
                removed[kept] = False
                max_removed = max(max_removed, float(gamma_importance(self, unit)[removed].max()))
        threshold = float(flat[order[n_remove]]) if n_remove else -math.inf
        removed = 1 - sum(counts) / self.n_channels
        keep = {name: sorted(k) for name, k in keep.items()}
        return PrunePlan(keep, threshold, ratio, max_removed, removed, self._widths())

    def _widths(self) -> dict[str, int]:
        """Every channel group's width as the model now has it (the BN's feature count)."""
        return {g.name: self.modules[g.name].num_features for g in self.graph.groups.values()}

    def _bounded(self, k: int, n: int) -> int:
        """`k` raised to the floor and rounded up to a multiple of `round_to`, at most `n`."""
        k = max(k, math.ceil(self.min_keep * n), 1)
        return min(n, math.ceil(k / self.round_to) * self.round_to)

    def apply(self, plan: PrunePlan) -> list[LayerChange]:
        """Slice every producer and consumer to the plan (`surgery.cut`); return the per-layer changes.

        The plan must be one made for a model of this model's widths, and the model must still have the widths
        this pruner read: applying a plan twice, or to another model, is refused before anything is sliced.
        """
        widths = self._widths()
        if widths != {g.name: g.size for g in self.graph.groups.values()}:
            raise ValueError(
                "the model no longer has the channel counts this Pruner read (a plan was applied already?): "
                "build a new Pruner for it and plan again"
            )
        if plan.widths is not None and plan.widths != widths:
            raise ValueError("this plan was made for a model with other channel counts: plan on this model")
        return cut(self.model, self.graph, plan_masks(self.graph, plan.keep), self.fold)


def check_amount(ratio: Any, target: tuple[str, Any] | None) -> tuple[float | None, tuple[str, float] | None]:
    """How much to prune: exactly one of a channel `ratio` and a compute `target` (kind, share), each valid;
    returned as plain floats."""
    if (ratio is None) == (target is None):
        raise ValueError(
            "give either --prune-ratio or a target (--target-gflops / --target-params), not both or neither"
        )
    if ratio is not None:
        return check_ratio(ratio), None
    kind, share = target
    return None, (kind, check_budget(kind, share))


def prune_model(
    model: nn.Module,
    ratio: float | None = None,
    target: tuple[str, float] | None = None,
    ranking: Ranking = Ranking(),
    importance: Importance | str | None = None,
    fold: bool = True,
) -> tuple[nn.Module, PrunePlan, list[LayerChange]]:
    """A pruned copy of `model` (the input is left untouched), the plan used and the per-layer changes.

    Args:
        model: an Ultralytics detection-family model.
        ratio: share of prunable channels to remove, in [0, 1) (a Python, NumPy or torch scalar).
        target: instead of `ratio`, a compute budget: ("gflops", 0.4) keeps 40% of the GFLOPs, ("params", s).
        ranking, importance, fold: as `Pruner` takes them.

    Returns:
        (the pruned copy, its `PrunePlan`, one `LayerChange` per channel group).

    Raises:
        ValueError: a bad amount, an unreachable target, or a criterion that needs data (the table's Taylor: pass
            `Ranking(importance="gamma")` or a made importance). UnsupportedModuleError: a block no rule covers.

    Example:
        >>> rank = Ranking(importance="gamma", round_to=8)
        >>> pruned, plan, changes = prune_model(YOLO("best.pt").model, target=("gflops", 0.4), ranking=rank)
    """
    ratio, target = check_amount(ratio, target)
    pruned = deepcopy(model).float().eval()
    pruner = Pruner(pruned, ranking, importance, fold)
    plan = pruner.plan(ratio) if ratio is not None else pruner.plan_budget(*target)
    return pruned, plan, pruner.apply(plan)
