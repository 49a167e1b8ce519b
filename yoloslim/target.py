"""Sparsity training toward a target: channels driven to exact zero in the user's epochs, until a share of them
(`sparsity=s`) or a compute budget (`target_gflops=r`: the live channels keep a share r of the GFLOPs) is met.

The L1 sub-gradient alone (`sparsity.py`) moves each gamma by about `lr` a step under Adam and is clipped
with the rest of the gradient, so a few hundred steps leave no gamma near zero. With `sparsity=s` the
trainer also zeroes channels progressively, as in gradual magnitude pruning (Zhu & Gupta 2017, "To prune,
or not to prune", arXiv:1710.01878), applied to whole BN channels:

- the share of zeroed channels (or of GFLOPs removed) follows the cubic schedule `s * (1 - (1 - u)^3)`, `u` running from 0 to 1 as
  training progress goes from `RAMP_START` to `RAMP_END`: the L1 term alone acts first (so the ranking has
  separated when zeroing starts), and the last quarter trains the survivors with the zeros held. Measured on
  the demo (docs/SPARSITY.md): zeroing from the start instead cost 4 pt of mAP50-95;
- which channels: the lowest-ranked by the `Pruner`'s own importance, floors and equal C2f halves
  (`Pruner.plan_share` / `plan_budget`), so the L1 term is the ranking signal and pruning at ratio `s` (or
  at `--target-gflops r`) later removes only zeroed channels (all of them but the few that equal C2f halves or `round_to` keep, which stay zero);
- a zeroed channel has gamma = beta = 0, so it outputs exactly 0 (SiLU(0) = 0): removing it changes no output;
- zeros are applied after every optimizer step to the model and to its EMA (which Ultralytics validates
  and saves), and gradients of zeroed channels are cleared before clipping so they take none of its budget.

The mask is a function of the weights (zeros rank lowest) and of the epoch, so `resume` continues it.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.prune import Pruner, check_budget

RAMP_START = 0.25  # share of the run before zeroing starts: the L1 term first separates the channels
RAMP_END = 0.75  # share of the run at which the zeroed share reaches the target; the rest recovers
UPDATE_STEP = 0.01  # re-rank when the scheduled share (of channels or of GFLOPs) has grown by this much (20-60 ms on yolov8s, CPU)


def check_sparsity(value: object) -> float:
    """A sparsity target: a share of prunable channels in [0, 1) (0 = no target)."""
    try:
        share = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"sparsity={value!r} is not a number: pass a share of channels in [0, 1), e.g. 0.5") from None
    if not 0 <= share < 1:
        raise ValueError(f"sparsity={value!r} must be in [0, 1): the share of prunable channels to drive to zero")
    return share


def check_target_gflops(value: object) -> float:
    """A GFLOPs target for sparsity training: the share of the unpruned model's GFLOPs to keep, 0 = none."""
    try:
        share = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"target_gflops={value!r} is not a number: pass a share in (0, 1], e.g. 0.4") from None
    if not 0 <= share <= 1:
        raise ValueError(
            f"target_gflops={value!r} must be in (0, 1]: the share of the unpruned model's GFLOPs to keep (0 = none)"
        )
    return share


def scheduled_share(target: float, progress: float) -> float:
    """Zhu & Gupta's cubic schedule: 0 until `RAMP_START` of the run, `target` from `RAMP_END` on."""
    t = min(max((progress - RAMP_START) / (RAMP_END - RAMP_START), 0.0), 1.0)
    return target * (1 - (1 - t) ** 3)


def check_target(model: nn.Module, kind: str, value: float, **pruner_args) -> Pruner:
    """The pruner that ranks `model`'s channels, once the target is known to be reachable under its floors.

    `kind` is "channels" (`value` = share of prunable channels zeroed) or "gflops" / "params" (`value` =
    share of the unpruned model's cost that the channels left alive keep). Raises `UnsupportedModuleError`
    for a model the channel graph does not cover, and ValueError for a target the floors do not allow.
    """
    pruner = Pruner(model, **pruner_args)
    if kind == "channels":
        if check_sparsity(value) > (most := pruner.max_share()):
            raise ValueError(
                f"sparsity={value:g} cannot be reached: the per-layer floors allow at most {most:.1%} of the "
                "prunable channels to be zeroed; lower it (or the pruner's min_keep)"
            )
    else:
        check_budget(kind, value)
        if value < (least := pruner.min_cost_share(kind)):
            raise ValueError(
                f"target_{kind}={value:g} cannot be reached: the per-layer floors keep at least {least:.3f} of the "
                f"{kind}; raise it (or lower the pruner's min_keep)"
            )
    return pruner


class ChannelZeroing:
    """Drives a growing set of prunable channels of a model (and of copies of it, like the EMA) to exact zero.

    Args:
        model: the model being trained; its channel graph and the pruner's ranking choose the channels.
        kind: what the target counts: "channels" (a share of prunable channels to zero) or "gflops" / "params"
            (the share of the unpruned model's cost that the live channels keep).
        value: the target.
        pruner_args: passed to `Pruner` (importance, min_keep, round_to, streams): use those you will prune with.
    """

    def __init__(self, model: nn.Module, kind: str, value: float, **pruner_args) -> None:
        self.pruner = check_target(model, kind, value, **pruner_args)
        self.kind, self.value = kind, float(value)
        self.final = self.value if kind == "channels" else 1 - self.value  # what the schedule removes in the end
        self.amount = 0.0  # what is removed now: a share of channels, or of the cost
        self.zeroed: dict[str, torch.Tensor] = {}  # BN name -> indices of its zeroed channels

    @property
    def finished(self) -> bool:
        """Whether the whole target is zeroed."""
        return self.amount >= self.final

    def update(self, progress: float, models: list[nn.Module]) -> None:
        """Grow the zeroed set to the schedule at `progress` (0 to 1 of the run), then zero it in `models`."""
        amount = scheduled_share(self.final, progress)
        if amount >= self.amount + UPDATE_STEP or (amount == self.final > self.amount) or (amount and not self.zeroed):
            if self.kind == "channels":
                plan = self.pruner.plan_share(amount)
            else:
                plan = self.pruner.plan_budget(self.kind, 1 - amount)
            self.amount = amount
            self.zeroed = {
                g.name: torch.tensor(sorted(set(range(g.size)) - set(plan.keep[g.name])), dtype=torch.long)
                for g in self.pruner.graph.prunable
                if len(plan.keep[g.name]) < g.size
            }
        self.apply(models)

    @torch.no_grad()
    def apply(self, models: list[nn.Module]) -> None:
        """Set gamma and beta of every zeroed channel to 0 in each of `models` (same architecture)."""
        for model in models:
            modules = dict(model.named_modules())
            for name, idx in self.zeroed.items():
                bn = modules[name]
                bn.weight.index_fill_(0, idx.to(bn.weight.device), 0)
                bn.bias.index_fill_(0, idx.to(bn.bias.device), 0)

    @torch.no_grad()
    def clear_grads(self) -> None:
        """Zero the gradients of zeroed channels (they would only take a share of the clipping budget)."""
        modules = self.pruner.modules
        for name, idx in self.zeroed.items():
            for p in (modules[name].weight, modules[name].bias):
                if p.grad is not None:
                    p.grad.index_fill_(0, idx.to(p.grad.device), 0)
