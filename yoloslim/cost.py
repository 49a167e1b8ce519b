"""What a pruned model costs, as a function of the channels each prunable unit keeps.

Every conv of the channel graph costs `kh * kw * H * W` multiply-adds per (input, output) channel pair and
`kh * kw` weights per pair, and its BN `4 * H * W` operations (as thop counts them) and 2 parameters per
output channel; input and output widths are linear in the kept counts, so the model's cost is a quadratic
in them. `CostModel` evaluates it for any plan without touching the model (the pruner's
target search evaluates it dozens of times), and its gradient at full width is what one channel of each
unit costs (the cost-aware importance of `prune.py`).

Activations, upsampling, pooling and the DFL decode are not counted (thop counts none of them, or a fixed
amount); the reports measure the pruned model with Ultralytics' own `get_flops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from yoloslim.channels import ChannelGraph, input_channels
from yoloslim.settings import BUDGETS

KINDS = BUDGETS


@dataclass(frozen=True)
class Unit:
    """Channels that are ranked, kept and removed as one.

    Channel j of the unit is channel `offset + j` of every member BN: one group, one half of a C2f.cv1,
    or a residual stream (the second half of C2f.cv1 and every Bottleneck cv2 that adds into it), with the
    depthwise convs that read any of them.
    `twin` is the index of the unit that must keep as many channels (the other half of a C2f.cv1), or -1.
    """

    members: tuple[tuple[str, int], ...]
    size: int
    twin: int = -1


def prunable_units(graph: ChannelGraph) -> list[Unit]:
    """The units of a graph's prunable groups, in forward order."""
    members: list[list[tuple[str, int]]] = []
    sizes: list[int] = []
    twins: list[int] = []
    where: dict[tuple[str, int], int] = {}  # (BN, offset) -> unit
    for g in graph.prunable:
        if g.link:  # a Bottleneck cv2 joins the stream it adds onto, a depthwise conv the channels it reads
            u = where[(g.link, g.offset)]
            members[u].append((g.name, 0))
            where[(g.name, 0)] = u
            continue
        half = g.size // g.halves
        first = len(members)
        for h in range(g.halves):
            where[(g.name, h * half)] = len(members)
            members.append([(g.name, h * half)])
            sizes.append(half)
            twins.append(first + 1 - h if g.halves == 2 else -1)
    return [Unit(tuple(m), s, t) for m, s, t in zip(members, sizes, twins, strict=True)]


def units_by_bn(units: Sequence[Unit]) -> dict[str, list[tuple[int, int]]]:
    """For each prunable BN, (unit index, offset) of each unit that covers part of it."""
    out: dict[str, list[tuple[int, int]]] = {}
    for u, unit in enumerate(units):
        for bn, offset in unit.members:
            out.setdefault(bn, []).append((u, offset))
    return out


class CostModel:
    """GFLOPs (multiply-adds) and parameters of a model's convs as functions of the units' kept counts.

    Args:
        model: the unpruned model (one forward pass, in eval mode, measures each conv's output size).
        graph: its channel graph.
        units: its prunable units (`prunable_units(graph)`).
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph, units: Sequence[Unit]) -> None:
        covers = units_by_bn(units)
        unit_at: dict[tuple[str, int], int] = {}
        for bn, spans in covers.items():
            for u, offset in spans:
                unit_at.update({(bn, offset + j): u for j in range(units[u].size)})
        names = list(graph.consumers)
        n, m = len(names), len(units)
        self.in_units, self.out_units = torch.zeros(n, m, dtype=torch.float64), torch.zeros(n, m, dtype=torch.float64)
        self.in_fixed, self.out_fixed = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        modules = dict(model.named_modules())
        for i, name in enumerate(names):
            c = graph.consumers[name]
            for source in () if c.depthwise else c.inputs:  # a depthwise conv: one input per output channel
                if source in unit_at:
                    self.in_units[i, unit_at[source]] += 1 / units[unit_at[source]].size
                else:  # the image, or a group that is not prunable
                    self.in_fixed[i] += 1
            if c.depthwise:
                self.in_fixed[i] = 1
            group = graph.groups.get(name.removesuffix(".conv") + ".bn") if c.has_bn else None
            if group is not None and group.name in covers:
                for u, _ in covers[group.name]:
                    self.out_units[i, u] = 1
            else:
                self.out_fixed[i] = modules[name].out_channels
        kernel = torch.tensor([c.kernel[0] * c.kernel[1] for c in graph.consumers.values()], dtype=torch.float64)
        pixels = torch.tensor(_output_pixels(model, names), dtype=torch.float64)
        bn = torch.tensor([c.has_bn for c in graph.consumers.values()], dtype=torch.float64)
        self.per_pair = {"gflops": kernel * pixels, "params": kernel}
        # per output channel: a BN (4 ops per element as thop counts them, 2 parameters) or a head conv's bias
        self.per_output = {"gflops": 4 * bn * pixels, "params": 2 * bn + (1 - bn)}
        self.full_counts = torch.tensor([u.size for u in units], dtype=torch.float64)
        self.full = {kind: float(self.cost(self.full_counts, kind)) for kind in KINDS}

    def cost(self, counts: torch.Tensor, kind: str) -> torch.Tensor:
        """The `kind` cost ("gflops" or "params", in multiply-adds or weights) when unit u keeps `counts[u]`."""
        inputs = self.in_units @ counts + self.in_fixed
        outputs = self.out_units @ counts + self.out_fixed
        return ((self.per_pair[kind] * inputs + self.per_output[kind]) * outputs).sum()

    def share(self, counts: Sequence[int], kind: str) -> float:
        """The `kind` cost of `counts` as a share of the unpruned model's."""
        return float(self.cost(torch.tensor(counts, dtype=torch.float64), kind)) / self.full[kind]

    def per_channel(self, kind: str = "gflops") -> torch.Tensor:
        """What removing one channel of each unit saves at full width (the cost's gradient), per unit."""
        counts = self.full_counts.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.cost(counts, kind), counts)
        return grad.detach()


def _output_pixels(model: nn.Module, names: list[str]) -> list[int]:
    """H * W of each named conv's output for a square image of twice the model's largest stride.

    Every stride divides that size, so each layer's share of the FLOPs is the same as at any training imgsz
    (also a multiple of the largest stride), and the pass is cheap.
    """
    modules = dict(model.named_modules())
    size = 2 * int(max(getattr(model, "stride", torch.tensor([32.0])).max().item(), 32))
    pixels: dict[str, int] = {}
    hooks = [
        modules[n].register_forward_hook(lambda _m, _i, out, n=n: pixels.__setitem__(n, out.shape[-2] * out.shape[-1]))
        for n in names
    ]
    p = next(model.parameters())
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, input_channels(model), size, size, device=p.device, dtype=p.dtype))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return [pixels.get(n, 0) for n in names]  # 0: a training-only branch (Proto26.semseg), absent at inference
