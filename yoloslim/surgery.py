"""Channel surgery: slice a model's convs and BNs to the channels a plan keeps, as the channel graph describes.

Removing a conv's output filters together with the matching input columns of every conv that reads them follows
Li et al. 2016 (arXiv:1608.08710). A removed channel whose gamma is 0 still emits a constant, `act(beta)`; folding it
into its readers (the next BN's running mean, or a head conv's bias) makes removing zeroed channels exact for 1x1
readers and close for the others. Kept apart from the ranking and planning (`prune.py`), as Torch-Pruning keeps its
pruning functions apart from its pruner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules import C2, C2f

from yoloslim.channels import ChannelGraph, ChannelGroup, Consumer


@dataclass(frozen=True)
class LayerChange:
    """One row of the per-layer report."""

    name: str
    before: int
    after: int
    prunable: bool


def plan_masks(graph: ChannelGraph, keep: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Per channel group, a boolean mask of the channels `keep` keeps (a group it does not name keeps all); an error,
    before anything is sliced, for a plan that empties a group, splits C2f halves unevenly, cuts a group that is not
    prunable or breaks a link (a residual stream's BNs, a depthwise conv and its input)."""
    masks = {}
    for g in graph.groups.values():
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[keep.get(g.name, list(range(g.size)))] = True
        if not mask.any():
            raise ValueError(f"{g.name}: the plan keeps none of its {g.size} channels; every layer keeps at least one")
        if g.halves == 2 and mask[: g.size // 2].sum() != mask[g.size // 2 :].sum():
            raise ValueError(f"{g.name}: C2f.cv1 halves must keep equal counts (stock chunk(2))")
        if not g.prunable and not mask.all():
            raise ValueError(f"{g.name} is not prunable: {g.reason}")
        if g.link and not torch.equal(mask, masks[g.link][g.offset : g.offset + g.size]):
            what = "the BNs of a residual stream" if g.residual else "a depthwise conv and its input"
            raise ValueError(f"{g.name} is linked to {g.link}: {what} must keep the same channels")
        masks[g.name] = mask
    return masks


@torch.no_grad()
def cut(model: nn.Module, graph: ChannelGraph, masks: dict[str, torch.Tensor], fold: bool) -> list[LayerChange]:
    """Slice every producer and consumer of `model` to `masks` in place (folding removed channels' constant outputs
    into their readers if `fold`); return the per-layer changes."""
    modules = dict(model.named_modules())
    for c in graph.consumers.values():  # consumers first: folding reads the producers' unsliced BNs
        _slice_consumer(modules, graph, c, masks, fold)
    for g in graph.groups.values():
        _slice_producer(modules, g, masks[g.name])
    for m in model.modules():
        if isinstance(m, (C2f, C2)):  # both chunk cv1 by their stored half width
            m.c = m.cv1.conv.out_channels // 2
    return [LayerChange(g.name, g.size, int(masks[g.name].sum()), g.prunable) for g in graph.groups.values()]


def _slice_consumer(
    modules: dict[str, nn.Module], graph: ChannelGraph, c: Consumer, masks: dict[str, torch.Tensor], fold: bool
) -> None:
    """Drop the input columns of removed channels, folding their constant outputs first."""
    conv: nn.Conv2d = modules[c.name]
    keep = torch.tensor([not g or bool(masks[g][i]) for g, i in c.inputs])
    if keep.all() or c.depthwise:  # a depthwise conv loses its input channels with its outputs (the producer)
        return
    if fold:
        removed = (~keep).nonzero().flatten().tolist()
        constant = torch.stack([_constant_output(modules, graph, *c.inputs[j]) for j in removed])
        delta = conv.weight[:, removed].float().sum((2, 3)) @ constant  # per output channel
        if c.has_bn:
            bn: nn.BatchNorm2d = modules[c.name.removesuffix(".conv") + ".bn"]
            bn.running_mean -= delta.to(bn.running_mean)
        else:
            conv.bias += delta.to(conv.bias)
    conv.weight = nn.Parameter(conv.weight[:, keep].clone())
    conv.in_channels = int(keep.sum())


def _constant_output(modules: dict[str, nn.Module], graph: ChannelGraph, group: str, index: int) -> torch.Tensor:
    """What a channel emits when its gamma is zero: `act(beta)` of its Conv block, plus, for a Bottleneck cv2, what
    the stream it adds onto carries."""
    g = graph.groups[group]
    out = modules[g.conv].act(modules[g.name].bias[index].float())
    return out + _constant_output(modules, graph, g.residual, g.offset + index) if g.residual else out


def _slice_producer(modules: dict[str, nn.Module], g: ChannelGroup, mask: torch.Tensor) -> None:
    """Drop the removed output filters of a Conv block and the matching BN entries."""
    if mask.all():
        return
    conv: nn.Conv2d = modules[g.conv].conv
    bn: nn.BatchNorm2d = modules[g.name]
    conv.weight = nn.Parameter(conv.weight[mask].clone())
    conv.out_channels = int(mask.sum())
    if conv.groups > 1:  # depthwise: as many groups and inputs as outputs
        conv.groups = conv.in_channels = conv.out_channels
    bn.weight = nn.Parameter(bn.weight[mask].clone())
    bn.bias = nn.Parameter(bn.bias[mask].clone())
    bn.running_mean = bn.running_mean[mask].clone()
    bn.running_var = bn.running_var[mask].clone()
    bn.num_features = int(mask.sum())
