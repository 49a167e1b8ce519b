"""First-order Taylor importance of BN channels (Molchanov et al. 2019, "Importance Estimation for Neural Network
Pruning", CVPR, arXiv:1906.10771).

Removing a channel sets its BN's gamma and beta to 0 (its output becomes act(0) = 0). To first order this changes
the loss by `-(dL/dgamma * gamma + dL/dbeta * beta)`, summed over the BNs that carry the channel (the BNs of a
residual stream, a depthwise conv that follows it). Molchanov et al. score a channel by the square of that change,
averaged over mini-batches; here the average is an exponential moving average over optimizer steps, so that the
score follows the network while sparsity training reshapes it.

Why not |gamma| alone: a trained network keeps channels whose gamma is small but whose constant output act(beta) its
consumers rely on, and channels whose gamma is large but whose consumers ignore them. On two pretrained starts
zeroing a few of the lowest-|gamma| channels did worse than removing channels at random, while five times as many of
the lowest-Taylor ones cost little (docs/lab/pretrained-start.md, bench/removal_curve.py). The score needs no extra
pass during training: the trainer has the gradients at every step. `estimate_taylor` computes it from a few batches
for a model that is not training.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader
from ultralytics.nn.tasks import guess_model_task

from yoloslim.channels import build_graph
from yoloslim.data import train_split_as_validated
from yoloslim.settings import DEFAULT_STREAMS
from yoloslim.cost import Unit, prunable_units

if TYPE_CHECKING:
    from yoloslim.prune import Pruner

DECAY = 0.95  # EMA decay per optimizer step: a horizon of about 20 steps (1.4 epochs of a 222-image set at nbs 16)
ESTIMATE_BATCHES = 8  # batches of 16 training images for a model that is not training


def first_order_change(modules: dict[str, nn.Module], unit: Unit, grad_scale: float = 1.0) -> torch.Tensor:
    """Per channel of `unit`, `dL/dgamma * gamma + dL/dbeta * beta` summed over its BNs (gradients divided by
    `grad_scale`, AMP's loss scale): minus the first-order change in the loss when the channels are removed."""
    total = torch.zeros(unit.size, device=modules[unit.members[0][0]].weight.device)
    for name, offset in unit.members:
        bn = modules[name]
        for p in (bn.weight, bn.bias):
            if p.grad is not None:
                total += (p.grad[offset : offset + unit.size] * p[offset : offset + unit.size]).detach().float()
    return total / grad_scale


class TaylorImportance:
    """An `Importance` for `Pruner`: the moving average of each channel's squared first-order change in the loss.

    Call `accumulate` after each backward pass (before the optimizer step changes the weights); the pruner then
    ranks by the averages. Scores are keyed by the unit's BN names, so one instance serves any `Pruner` built on
    the same model (or a copy of it).
    """

    def __init__(self, decay: float = DECAY) -> None:
        self.decay = decay
        self.scores: dict[tuple[tuple[str, int], ...], torch.Tensor] = {}

    @torch.no_grad()
    def accumulate(self, modules: dict[str, nn.Module], units: Iterable[Unit], grad_scale: float = 1.0) -> bool:
        """Fold the current gradients of every unit's BNs into the averages; return False, changing nothing, for a
        step whose gradients are not finite (an AMP overflow, which the scaler skips too)."""
        squares = {unit.members: first_order_change(modules, unit, grad_scale).square() for unit in units}
        if not bool(torch.stack([s.isfinite().all() for s in squares.values()]).all()):
            return False
        for key, square in squares.items():
            old = self.scores.get(key)
            if old is not None:
                old = old.to(square.device)  # a resumed run's averages are loaded on the CPU
            self.scores[key] = square if old is None else old.mul_(self.decay).add_(square, alpha=1 - self.decay)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The averages (on the CPU) and the decay, for a resumed run to continue them."""
        return {"decay": self.decay, "scores": {k: v.detach().cpu().clone() for k, v in self.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the averages of `state_dict()` (they move to the gradients' device at the next step)."""
        self.decay = state["decay"]
        self.scores = {tuple(map(tuple, k)): v for k, v in state["scores"].items()}

    def __call__(self, pruner: Pruner, unit: Unit) -> torch.Tensor:
        """The unit's channel scores (higher is more important)."""
        if (score := self.scores.get(unit.members)) is None:
            raise ValueError(
                "Taylor importance has no gradients yet: accumulate() after a backward pass, or use estimate_taylor()"
            )
        return score.cpu()


def estimate_taylor(
    model: nn.Module,
    data: str,
    imgsz: int,
    batches: int = ESTIMATE_BATCHES,
    batch: int = 16,
    streams: bool = DEFAULT_STREAMS,
) -> TaylorImportance:
    """Taylor scores of `model` (left untouched) from `batches` batches of the dataset's training images.

    The loss is Ultralytics' own training loss of the model's task, on the first training images in file order as
    validation sees them (no augmentation, no shuffling: the scores are reproducible), with BN in inference mode:
    the network that pruning changes. The average is a plain mean over the batches, as Molchanov et al. average.
    """
    scored = deepcopy(model).float().eval()
    for p in scored.parameters():
        p.requires_grad_(True)
    task = guess_model_task(scored)
    scored.args = get_cfg(overrides={"task": task, "imgsz": imgsz, "data": data})
    dataset = train_split_as_validated(scored.args, batch, stride=int(scored.stride.max()))
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False, device="cpu")
    modules = dict(scored.named_modules())
    units = prunable_units(build_graph(scored, streams))
    importance = TaylorImportance()
    for i, b in enumerate(loader):
        if i == batches:
            break
        b["img"] = b["img"].float() / 255
        scored.zero_grad(set_to_none=True)
        loss, _ = scored.loss(b)
        loss.sum().backward()
        importance.decay = i / (i + 1)  # the running mean of the squares over batches
        importance.accumulate(modules, units)
    importance.decay = DECAY
    return importance
