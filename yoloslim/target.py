"""Sparsity training toward a target: channels driven to exact zero in the user's epochs, until a share of them
(`sparsity=s`) or a compute budget (`target_gflops=r`: the live channels keep a share r of the GFLOPs) is met.

The L1 sub-gradient alone (`sparsity.py`) moves each gamma by about `lr` a step under Adam and is clipped
with the rest of the gradient, so a few hundred steps leave no gamma near zero. With `sparsity=s` the
trainer also zeroes channels progressively, as in gradual magnitude pruning (Zhu & Gupta 2017, "To prune,
or not to prune", arXiv:1710.01878), applied to whole BN channels:

- the share of chosen channels (or of GFLOPs removed) follows the cubic schedule `s * (1 - (1 - u)^3)`, `u` running
  from 0 to 1 as training progress goes from `RAMP_START` to `RAMP_END`: the ranking is accumulated first, and the
  last fifth of the run trains the survivors with the zeros held (zeroing from the start cost accuracy on the
  demo, docs/SPARSITY.md);
- which channels: the lowest-ranked by the `Pruner`'s own importance (Taylor's by default, `taylor.py`), floors and
  equal C2f halves (`Pruner.plan_share` / `plan_budget`), so pruning at ratio `s` (or at `--target-gflops r`)
  later removes only zeroed channels (all of them but the few that equal C2f halves or `round_to` keep, which
  stay zero); once chosen, a channel stays chosen;
- a chosen channel fades: gamma and beta go linearly to exactly 0 over `FADE` of the run, then stay 0, so it
  outputs exactly SiLU(0) = 0 and removing it changes no output;
- the fade and the zeros are applied after every optimizer step to the model and to its EMA (which Ultralytics
  validates and saves), and gradients of chosen channels are cleared before clipping so they take none of its budget.

A resumed run continues the chosen set, the fades and the ranking's averages that the trainer saved beside
`last.pt` (`state_dict`); without that file, exact zeros rank lowest under every importance, so its first plan
chooses them again.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from yoloslim.cost import Unit
from yoloslim.importance import Importance, Source, learns_from_gradients, make_importance
from yoloslim.prune import Pruner, PrunePlan
from yoloslim.settings import Ranking, SparsityTarget

RAMP_START = 0.25  # share of the run before any channel is chosen: the ranking accumulates first
RAMP_END = 0.7  # share of the run at which the chosen share reaches the target
FADE = 0.1  # share of the run over which a chosen channel fades to exactly 0: all are 0 from 0.8 on; the rest recovers
UPDATE_STEP = 0.01  # re-rank when the scheduled share (of channels or of GFLOPs) has grown by this much (20-60 ms on yolov8s, CPU)


def scheduled_share(target: float, progress: float) -> float:
    """Zhu & Gupta's cubic schedule: 0 until `RAMP_START` of the run, `target` from `RAMP_END` on."""
    t = min(max((progress - RAMP_START) / (RAMP_END - RAMP_START), 0.0), 1.0)
    return target * (1 - (1 - t) ** 3)


def check_target(model: nn.Module, target: SparsityTarget, ranking: Ranking, importance: Importance) -> Pruner:
    """The pruner that ranks `model`'s channels by `importance` under `ranking`'s floors, once `target` is known to
    be reachable under them.

    Raises:
        UnsupportedModuleError: a model the channel graph does not cover.
        ValueError: a target the floors do not allow.
    """
    pruner = Pruner(model, ranking, importance)
    kind, value = target.kind, target.value
    if kind == "channels" and value > (most := pruner.max_share()):
        raise ValueError(
            f"sparsity={value:g} cannot be reached: the per-layer floors allow at most {most:.1%} of the "
            "prunable channels to be zeroed; lower it (or the pruner's min_keep)"
        )
    if kind != "channels" and value < (least := pruner.min_cost_share(kind)):
        raise ValueError(
            f"target_{kind}={value:g} cannot be reached: the per-layer floors keep at least {least:.3f} of the "
            f"{kind}; raise it (or lower the pruner's min_keep)"
        )
    return pruner


class ChannelZeroing:
    """Drives a growing set of prunable channels of a model (and of copies of it, like the EMA) to exact zero.

    A chosen channel fades: its gamma and beta go linearly from their values when it was chosen to exactly 0 over
    `FADE` of the run, so no step changes the network by more than a small part of what removing it does (a trained
    network lost 2/3 of its mAP50-95 when 6% of random channels went to 0 at once, docs/RESULTS.md). Once chosen, a
    channel stays chosen: it ranks below every other channel in later plans.

    Args:
        model: the model being trained; its channel graph and the ranking choose the channels.
        target: what to zero: a share of prunable channels, or the share of the unpruned model's cost that the live
            channels keep.
        ranking: the ranking you will prune with. A criterion that learns from gradients (`LearnsFromGradients`,
            Taylor's) starts empty: feed `zeroing.importance.accumulate` after each backward pass, as the trainer
            does.
    """

    def __init__(self, model: nn.Module, target: SparsityTarget, ranking: Ranking) -> None:
        self.importance = make_importance(ranking.importance, Source(model, streams=ranking.streams, training=True))
        self.pruner = check_target(model, target, ranking, self._rank)
        self.kind, self.value, self.final = target.kind, target.value, target.final
        self.amount = 0.0  # what is removed now: a share of channels, or of the cost
        self.progress = 0.0
        self.zeroed: dict[str, torch.Tensor] = {}  # BN name -> indices of its chosen channels
        self.until: dict[str, torch.Tensor] = {}  # BN name -> progress at which each chosen channel reaches 0
        self.start: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # BN name -> (gamma, beta) when chosen

    @property
    def finished(self) -> bool:
        """Whether the whole target is zeroed (every chosen channel has faded to exactly 0)."""
        faded = all(
            bool(((self.weights(name) == 0) | ((gamma == 0) & (beta == 0))).all())
            for name, (gamma, beta) in self.start.items()
        )
        return self.amount >= self.final and faded

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on exactly where this one stopped: the chosen channels, their fades, the
        schedule's position and the accumulated importance (a `TaylorImportance`'s averages)."""
        state = {k: getattr(self, k) for k in ("kind", "value", "amount", "progress")}
        state.update({k: dict(getattr(self, k)) for k in ("zeroed", "until", "start")})  # a copy: they grow
        if learns_from_gradients(self.importance):
            state["importance"] = self.importance.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a run with the same target and model."""
        if (state["kind"], state["value"]) != (self.kind, self.value):
            raise ValueError(
                f"the saved zeroing targets {state['kind']}={state['value']:g}, this run {self.kind}={self.value:g}"
            )
        for name, chosen in state["zeroed"].items():
            bn = self.pruner.modules.get(name)
            if not isinstance(bn, nn.BatchNorm2d) or (len(chosen) and int(chosen.max()) >= bn.num_features):
                raise ValueError(f"the saved zeroing chooses channels of '{name}', which this model does not have")
        for key in ("amount", "progress", "zeroed", "until", "start"):
            setattr(self, key, state[key])
        if "importance" in state and learns_from_gradients(self.importance):
            self.importance.load_state_dict(state["importance"])

    def _rank(self, pruner: Pruner, unit: Unit) -> torch.Tensor:
        """The importance, with the channels chosen so far below every other one (they stay chosen)."""
        score = self.importance(pruner, unit).float().clone()
        bn, offset = unit.members[0]
        if bn in self.zeroed:
            idx = self.zeroed[bn] - offset
            score[idx[(idx >= 0) & (idx < unit.size)]] = -math.inf
        return score

    def update(self, progress: float, models: list[nn.Module]) -> None:
        """Grow the chosen set to the schedule at `progress` (0 to 1 of the run), then fade it in `models`
        (the first is the model being trained: the fade starts from its values)."""
        self.progress = progress
        amount = scheduled_share(self.final, progress)
        if amount >= self.amount + UPDATE_STEP or (amount == self.final > self.amount) or (amount and not self.zeroed):
            if self.kind == "channels":
                plan = self.pruner.plan_share(amount)
            else:
                plan = self.pruner.plan_budget(self.kind, 1 - amount)
            self.amount = amount
            self._choose(plan, progress, models[0])
        self.apply(models)

    @torch.no_grad()
    def _choose(self, plan: PrunePlan, progress: float, model: nn.Module) -> None:
        """Add the channels `plan` removes to the chosen set; the new ones start fading now, from `model`'s values."""
        modules = dict(model.named_modules())
        for g in self.pruner.graph.prunable:
            old = self.zeroed.get(g.name, torch.zeros(0, dtype=torch.long))
            new = torch.tensor(sorted(set(plan.dropped(g)) - set(old.tolist())), dtype=torch.long)
            if not len(new):
                continue
            bn = modules[g.name]
            gamma, beta = (p.detach()[new].float().cpu() for p in (bn.weight, bn.bias))
            old_gamma, old_beta = self.start.get(g.name, (torch.zeros(0), torch.zeros(0)))
            self.zeroed[g.name] = torch.cat([old, new])
            until = torch.full((len(new),), min(progress + FADE, max(progress, RAMP_END + FADE)))
            self.until[g.name] = torch.cat([self.until.get(g.name, torch.zeros(0)), until])
            self.start[g.name] = (torch.cat([old_gamma, gamma]), torch.cat([old_beta, beta]))

    def weights(self, name: str) -> torch.Tensor:
        """How much of its start value each chosen channel of BN `name` keeps now: 1 when chosen, 0 `FADE` later.

        A channel chosen after `RAMP_END` (a run of few steps, or a resume) fades faster: every chosen channel is 0
        from `RAMP_END + FADE` on, and one chosen later is 0 at once (the run may end at the next step)."""
        left = self.until[name] - self.progress
        return (left / FADE).clamp(0, 1) if FADE > 0 else torch.zeros_like(left)

    @torch.no_grad()
    def apply(self, models: list[nn.Module]) -> None:
        """Set gamma and beta of every chosen channel to its faded start value in each of `models` (same
        architecture); a channel that has faded is exactly 0."""
        for model in models:
            modules = dict(model.named_modules())
            for name, idx in self.zeroed.items():
                bn, w = modules[name], self.weights(name)
                for p, start in zip((bn.weight, bn.bias), self.start[name], strict=True):
                    p[idx.to(p.device)] = (start * w).to(p)

    @torch.no_grad()
    def clear_grads(self) -> None:
        """Zero the gradients of zeroed channels (they would only take a share of the clipping budget)."""
        modules = self.pruner.modules
        for name, idx in self.zeroed.items():
            for p in (modules[name].weight, modules[name].bias):
                if p.grad is not None:
                    p.grad.index_fill_(0, idx.to(p.grad.device), 0)
