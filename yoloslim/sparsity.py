"""The L1 penalty on BN scale factors (network slimming, Liu et al. 2017, arXiv:1708.06519).

Sparsity training minimises `loss + sr * sum |gamma|` over the prunable gammas, with `sr` the penalty for
every `IMAGES_PER_SR` images. Ultralytics' loss is a sum over images, accumulated over the micro-batches of
one optimizer step, so the sub-gradient added at a step is `sr * images / IMAGES_PER_SR * sign(gamma)`:
the same penalty per image whatever `batch`, `nbs`, `accumulate` (warm-up included) or the GPU count.
It is added to the still-scaled gradient (so AMP's unscaling turns it into exactly that) before
Ultralytics clips, with `sr` decayed linearly over the run.
"""

from __future__ import annotations

import torch
from torch import nn

from yoloslim.channels import build_graph
from yoloslim.settings import DEFAULT_STREAMS


IMAGES_PER_SR = 16  # Ultralytics' default batch: there, sr is the seed's per-micro-batch sr * sign(gamma)


def sr_for_images(sr: float, images: int) -> float:
    """The L1 coefficient for one optimizer step whose gradient sums the loss of `images` images."""
    return sr * images / IMAGES_PER_SR


def sr_at(sr: float, epoch: int, epochs: int) -> float:
    """The penalty for `epoch` (0-based) of `epochs`: `sr * (1 - 0.9 * epoch / epochs)`."""
    return sr * (1 - 0.9 * epoch / max(epochs, 1))


def prunable_gammas(model: nn.Module, streams: bool = DEFAULT_STREAMS) -> list[nn.Parameter]:
    """The gamma (BN weight) parameters of every prunable channel group of `model`, in graph order.

    With `streams`, each BN of a residual stream is one of them: the L1 term penalises the stream's gammas
    together, and their mean is the stream channel's importance.
    """
    modules = dict(model.named_modules())
    return [modules[g.name].weight for g in build_graph(model, streams).prunable]


@torch.no_grad()
def add_l1_subgradient(gammas: list[nn.Parameter], sr: float) -> int:
    """`grad += sr * sign(gamma)` for each gamma that has a gradient; return how many had one."""
    reached = 0
    for g in gammas:
        if g.grad is not None:
            g.grad.add_(torch.sign(g), alpha=sr)
            reached += 1
    return reached


@torch.no_grad()
def gamma_stats(gammas: list[nn.Parameter], small: float = 1e-2) -> dict[str, float]:
    """How sparse the gammas are: the share with |gamma| < `small`, and the median and mean of |gamma|."""
    if not gammas:
        return {}
    values = torch.cat([g.detach().abs().flatten().float().cpu() for g in gammas])
    return {
        f"sparsity/share_lt_{small:g}": float((values < small).float().mean()),
        "sparsity/median_gamma": float(values.median()),
        "sparsity/mean_gamma": float(values.mean()),
    }
