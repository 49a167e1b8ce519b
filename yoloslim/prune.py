"""Channel pruning by BN-gamma importance: choose the channels to keep, then slice the weights.

Network slimming (Liu et al. 2017, arXiv:1708.06519) removes the channels whose BN scale factor is
small, with one global threshold over all prunable channels; removing a conv's filters together with
the matching input columns of its consumers follows Li et al. 2016 (arXiv:1608.08710).

`Pruner` is one object with a swappable importance criterion (as in Torch-Pruning). `Pruner.plan`
returns a `PrunePlan` (the kept channels as plain data, as timm's `_prune.py` stores a pruned
structure), and `Pruner.apply` performs the surgery that the channel graph (`channels.py`) describes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules import C2f

from yoloslim.channels import ChannelGraph, ChannelGroup, Consumer, build_graph

Importance = Callable[[nn.BatchNorm2d], torch.Tensor]


def gamma_importance(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Network slimming's channel score: |gamma| of the BN that follows the conv."""
    return bn.weight.detach().abs().float()


@dataclass(frozen=True)
class PrunePlan:
    """The channels each group keeps (sorted indices), the global threshold that chose them (the lowest
    score kept) and the highest score removed (near 0 when only sparse-trained channels go)."""

    keep: dict[str, list[int]]
    threshold: float
    ratio: float
    max_removed: float = -math.inf


@dataclass(frozen=True)
class LayerChange:
    """One row of the per-layer report."""

    name: str
    before: int
    after: int
    prunable: bool


class Pruner:
    """Prunes the channels of a YOLOv8 `DetectionModel` in place.

    Args:
        model: the model to prune (modified by `apply`; pass a copy to keep the original).
        importance: channel score from a BN; higher means more important.
        round_to: keep counts in multiples of this (GPU-friendly shapes), capped at the layer width.
        min_keep: the per-layer floor, as a share of the layer's channels (at least one channel is kept),
            so that every ratio in [0, 1) works and no layer is ever emptied.
        fold: fold each removed channel's constant output `act(beta)` into its consumers (the next BN's
            running mean, or a head conv's bias), which makes removing zero-gamma channels exact for 1x1
            consumers and close for the others.
    """

    def __init__(
        self,
        model: nn.Module,
        importance: Importance = gamma_importance,
        round_to: int = 1,
        min_keep: float = 0.05,
        fold: bool = True,
    ) -> None:
        if round_to < 1:
            raise ValueError(f"round_to={round_to} must be a whole number >= 1")
        if not 0 <= min_keep <= 1:
            raise ValueError(f"min_keep={min_keep} must be a share in [0, 1]")
        self.model = model
        self.graph: ChannelGraph = build_graph(model)
        self.modules = dict(model.named_modules())
        self.importance, self.round_to, self.min_keep, self.fold = importance, round_to, min_keep, fold

    def scores(self) -> dict[str, torch.Tensor]:
        """The importance of every channel of every prunable group."""
        return {g.name: self.importance(self.modules[g.name]) for g in self.graph.prunable}

    def plan(self, ratio: float) -> PrunePlan:
        """Mark the `ratio` lowest-scoring prunable channels globally; keep the rest, within floors and rounding.

        Channels are ranked rather than compared with the threshold value, so ties (e.g. an untrained
        model whose gammas are all 1) still remove `ratio` of the channels. The threshold reported is
        the score of the lowest channel kept.
        """
        check_ratio(ratio)
        scores = self.scores()
        return self._plan_lowest(scores, self._order(scores), int(ratio * self.n_channels), ratio)

    def plan_share(self, share: float) -> PrunePlan:
        """The plan that removes the fewest channels but at least `share` of them (floors and rounding included).

        `plan(ratio)` can remove less than `ratio` where floors or equal C2f halves keep marked channels;
        this searches the number of marked channels instead, so the share removed is a guarantee.
        """
        check_ratio(share)
        if share > (most := self.max_share()):
            raise ValueError(
                f"removing {share:.1%} of the prunable channels is not possible: the per-layer floors "
                f"(min_keep={self.min_keep:g}, round_to={self.round_to}) allow at most {most:.1%}"
            )
        scores = self.scores()
        order = self._order(scores)
        wanted = math.ceil(share * self.n_channels - 1e-9)
        lo, hi = wanted, self.n_channels
        while lo < hi:  # the removed count never falls as more channels are marked
            mid = (lo + hi) // 2
            removed = sum(g.size - g.halves * k for g, k in zip(self.graph.prunable, self._kept(scores, order, mid)))
            lo, hi = (lo, mid) if removed >= wanted else (mid + 1, hi)
        return self._plan_lowest(scores, order, lo, share)

    @property
    def n_channels(self) -> int:
        """How many prunable channels the model has."""
        return sum(g.size for g in self.graph.prunable)

    def removed(self, plan: PrunePlan) -> int:
        """How many prunable channels `plan` removes."""
        return sum(g.size - len(plan.keep[g.name]) for g in self.graph.prunable)

    def max_share(self) -> float:
        """The largest share of prunable channels the per-layer floors let any plan remove."""
        kept = sum(g.halves * self._bounded(0, g.size // g.halves) for g in self.graph.prunable)
        return 1 - kept / self.n_channels

    @staticmethod
    def _order(scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """All prunable channels (flat, in graph order), lowest score first; ties keep graph order."""
        return torch.cat(list(scores.values())).argsort(stable=True)

    def _kept(self, scores: dict[str, torch.Tensor], order: torch.Tensor, n_remove: int) -> list[int]:
        """Per prunable group (graph order), the channels each half keeps when the `n_remove` lowest are marked."""
        below = torch.zeros(len(order), dtype=torch.bool)
        below[order[: min(n_remove, len(order) - 1)]] = True
        return [
            self._bounded(max(int((~b).sum()) for b in part.chunk(g.halves)), g.size // g.halves)
            for g, part in zip(self.graph.prunable, below.split([len(v) for v in scores.values()]), strict=True)
        ]

    def _plan_lowest(
        self, scores: dict[str, torch.Tensor], order: torch.Tensor, n_remove: int, ratio: float
    ) -> PrunePlan:
        """Mark the `n_remove` lowest-scoring channels; each group keeps its unmarked ones, within its floor."""
        flat = torch.cat(list(scores.values()))
        n_remove = min(n_remove, len(flat) - 1)
        kept = dict(zip(scores, self._kept(scores, order, n_remove), strict=True))
        keep, max_removed = {}, -math.inf
        for g in self.graph.groups.values():
            if not g.prunable:
                keep[g.name] = list(range(g.size))
                continue
            parts = scores[g.name].chunk(g.halves)  # C2f.cv1: both halves keep the same count
            keep[g.name] = sorted(
                i * len(parts[0]) + j for i, p in enumerate(parts) for j in p.topk(kept[g.name]).indices.tolist()
            )
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[keep[g.name]] = False
            if removed.any():
                max_removed = max(max_removed, float(scores[g.name][removed].max()))
        threshold = float(flat[order[n_remove]]) if n_remove else -math.inf
        return PrunePlan(keep, threshold, ratio, max_removed)

    def _bounded(self, k: int, n: int) -> int:
        """`k` raised to the floor and rounded up to a multiple of `round_to`, at most `n`."""
        k = max(k, math.ceil(self.min_keep * n), 1)
        return min(n, math.ceil(k / self.round_to) * self.round_to)

    def apply(self, plan: PrunePlan) -> list[LayerChange]:
        """Slice every producer and consumer to the plan; return the per-layer changes."""
        masks = {}
        for g in self.graph.groups.values():
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[plan.keep.get(g.name, list(range(g.size)))] = True
            if not mask.any():
                raise ValueError(
                    f"{g.name}: the plan keeps none of its {g.size} channels; every layer keeps at least one"
                )
            if g.halves == 2 and mask[: g.size // 2].sum() != mask[g.size // 2 :].sum():
                raise ValueError(f"{g.name}: C2f.cv1 halves must keep equal counts (stock chunk(2))")
            if not g.prunable and not mask.all():
                raise ValueError(f"{g.name} is not prunable: {g.reason}")
            masks[g.name] = mask
        with torch.no_grad():
            for c in self.graph.consumers.values():  # consumers first: folding reads the producers' unsliced BNs
                self._slice_consumer(c, masks)
            for g in self.graph.groups.values():
                self._slice_producer(g, masks[g.name])
        for m in self.model.modules():
            if isinstance(m, C2f):
                m.c = m.cv1.conv.out_channels // 2
        return [LayerChange(g.name, g.size, int(masks[g.name].sum()), g.prunable) for g in self.graph.groups.values()]

    def _slice_consumer(self, c: Consumer, masks: dict[str, torch.Tensor]) -> None:
        """Drop the input columns of removed channels, folding their constant outputs first."""
        conv: nn.Conv2d = self.modules[c.name]
        keep = torch.tensor([not g or bool(masks[g][i]) for g, i in c.inputs])
        if keep.all():
            return
        if self.fold:
            removed = (~keep).nonzero().flatten().tolist()
            constant = torch.stack([self._constant_output(*c.inputs[j]) for j in removed])
            delta = conv.weight[:, removed].float().sum((2, 3)) @ constant  # per output channel
            if c.has_bn:
                bn: nn.BatchNorm2d = self.modules[c.name.removesuffix(".conv") + ".bn"]
                bn.running_mean -= delta.to(bn.running_mean)
            else:
                conv.bias += delta.to(conv.bias)
        conv.weight = nn.Parameter(conv.weight[:, keep].clone())
        conv.in_channels = int(keep.sum())

    def _constant_output(self, group: str, index: int) -> torch.Tensor:
        """What a channel emits when its gamma is zero: `act(beta)` of its Conv block."""
        g = self.graph.groups[group]
        beta = self.modules[g.name].bias[index].float()
        return self.modules[g.conv].act(beta)

    def _slice_producer(self, g: ChannelGroup, mask: torch.Tensor) -> None:
        """Drop the removed output filters of a Conv block and the matching BN entries."""
        if mask.all():
            return
        conv: nn.Conv2d = self.modules[g.conv].conv
        bn: nn.BatchNorm2d = self.modules[g.name]
        conv.weight = nn.Parameter(conv.weight[mask].clone())
        conv.out_channels = int(mask.sum())
        bn.weight = nn.Parameter(bn.weight[mask].clone())
        bn.bias = nn.Parameter(bn.bias[mask].clone())
        bn.running_mean = bn.running_mean[mask].clone()
        bn.running_var = bn.running_var[mask].clone()
        bn.num_features = int(mask.sum())


def check_ratio(ratio: float) -> None:
    """A prune ratio must be a share of channels in [0, 1)."""
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"prune ratio {ratio!r} must be in [0, 1): e.g. 0.5 removes half of the prunable channels")


def prune_model(model: nn.Module, ratio: float, **pruner_args) -> tuple[nn.Module, PrunePlan, list[LayerChange]]:
    """A pruned copy of `model` (the input is left untouched), the plan used and the per-layer changes."""
    check_ratio(ratio)
    pruned = deepcopy(model).float().eval()
    pruner = Pruner(pruned, **pruner_args)
    plan = pruner.plan(ratio)
    return pruned, plan, pruner.apply(plan)
