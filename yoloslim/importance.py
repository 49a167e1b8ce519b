"""Channel importance as one protocol: a registry of criteria and one factory that every caller asks.

An importance is a callable `(pruner, unit) -> scores` (one score per channel of a prunable unit, higher is more
important), as Torch-Pruning's `Importance` classes are. A criterion that learns from gradients says so by its
interface, not by its name: it has `accumulate(modules, units, grad_scale)`, which the trainer calls after every
backward pass, and `state_dict` / `load_state_dict` for a resumed run (`LearnsFromGradients`). Adding a criterion
is one entry in `REGISTRY` (and its name in `settings.IMPORTANCE_NAMES`, the settings table's choices).

The criteria:
- `gamma`: network slimming's |gamma| (Liu et al. 2017, arXiv:1708.06519);
- `flops`, `sqrt-flops`: |gamma| per GFLOP a channel costs, or per its square root (in the spirit of MorphNet's
  resource-weighted penalties, Gordon et al. 2018, arXiv:1711.06798);
- `taylor`: the squared first-order change in the loss (Molchanov et al. 2019, arXiv:1906.10771; `taylor.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from ultralytics.utils import LOGGER, colorstr

from yoloslim.cost import Unit
from yoloslim.settings import DEFAULT_STREAMS, IMPORTANCE_NAMES, check_importance
from yoloslim.taylor import ESTIMATE_BATCHES, TaylorImportance, estimate_taylor

if TYPE_CHECKING:
    from yoloslim.prune import Pruner

Importance = Callable[["Pruner", Unit], torch.Tensor]


@runtime_checkable
class LearnsFromGradients(Protocol):
    """An importance fed by the training loss's gradients: the trainer calls `accumulate` after each backward pass."""

    def accumulate(self, modules: dict[str, nn.Module], units: Any, grad_scale: float = 1.0) -> bool:
        """Fold the current gradients of `units` into the scores; False (nothing changed) for a non-finite step."""

    def state_dict(self) -> dict[str, Any]:
        """The scores so far, as tensors, dicts and numbers (a resumed run loads them with `weights_only=True`)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from the scores of `state_dict()`."""


def gamma_importance(pruner: Pruner, unit: Unit) -> torch.Tensor:
    """Network slimming's channel score: |gamma| of the BN after the conv, the mean over a stream's BNs
    (each is L1-penalised in sparse training, so the mean is what the penalty drives down)."""
    return torch.stack([pruner.gamma(bn)[o : o + unit.size] for bn, o in unit.members]).mean(0)


def cost_weighted(exponent: float) -> Importance:
    """Cost-aware score: |gamma| divided by (GFLOPs of one channel / the mean channel's) ** `exponent`. A channel of a
    high-resolution layer costs many times one of the P5 layers, so plain |gamma| keeps the expensive layers whole;
    with exponent 1 the cost dominates wherever the gammas have not separated (docs/RESULTS.md: it thins the stem to
    one channel), the square root weighs it less."""

    def importance(pruner: Pruner, unit: Unit) -> torch.Tensor:
        return gamma_importance(pruner, unit) / pruner.relative_cost[pruner.units.index(unit)] ** exponent

    return importance


@dataclass(frozen=True)
class Source:
    """What a criterion may read when it is made: the model, and for one that scores by gradients outside training
    its training images (`data()` is called only then, so a weight-only criterion never needs a dataset)."""

    model: nn.Module | None = None
    data: Callable[[], str] | None = None
    imgsz: int = 640
    streams: bool = DEFAULT_STREAMS
    training: bool = False  # the trainer feeds the criterion with each step's gradients


def _taylor(source: Source) -> TaylorImportance:
    """Taylor importance: empty for the trainer to feed, else estimated from a few batches of the training images."""
    if source.training:
        return TaylorImportance()
    if source.model is None or source.data is None:
        raise ValueError(
            "importance 'taylor' ranks channels by gradients of the loss: give the prune step its dataset, pass "
            "a TaylorImportance (yoloslim.taylor: estimate_taylor(model, data, imgsz)) as the importance, or rank "
            "by gamma (settings.Ranking(importance='gamma'))"
        )
    data = source.data()
    LOGGER.info(f"{colorstr('yoloslim:')} Taylor importance from {ESTIMATE_BATCHES} batches of the training images")
    return estimate_taylor(source.model, data, source.imgsz, streams=source.streams)


REGISTRY: dict[str, Callable[[Source], Importance]] = {
    "taylor": _taylor,
    "gamma": lambda source: gamma_importance,
    "flops": lambda source: cost_weighted(1.0),
    "sqrt-flops": lambda source: cost_weighted(0.5),
}
assert tuple(REGISTRY) == IMPORTANCE_NAMES, "settings.IMPORTANCE_NAMES must list the registry's criteria in order"


def make_importance(name: str | Importance, source: Source = Source()) -> Importance:
    """The importance called `name`, made from `source` (a callable is returned as it is).

    Args:
        name: a name in `settings.IMPORTANCE_NAMES`, or an importance already made.
        source: the model and, for a gradient criterion outside training, its training images.

    Returns:
        A callable `(pruner, unit) -> scores`; a `LearnsFromGradients` one when the criterion needs feeding.

    Raises:
        ValueError: an unknown name, or a gradient criterion with nothing to learn from.

    Example:
        >>> rank = make_importance("taylor", Source(model, data=lambda: "data.yaml", imgsz=640))
    """
    if callable(name):
        return name
    return REGISTRY[check_importance(name)](source)


def learns_from_gradients(importance: Any) -> bool:
    """Whether the trainer must feed `importance` with gradients (it has `accumulate`, `state_dict`, ...)."""
    return isinstance(importance, LearnsFromGradients)
