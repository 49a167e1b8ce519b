"""The channel graph of a YOLOv8 detector: the single source of truth for sparsity training and pruning.

Every BatchNorm after a convolution scores the output channels of that convolution (Liu et al. 2017,
"Learning Efficient Convolutional Networks through Network Slimming", arXiv:1708.06519). This module
traces a `DetectionModel` layer by layer and records, as plain data:

- each *channel group* (one BN and the conv before it): its size, whether it may be pruned, and why not;
- each *consumer* (every conv that reads a group's channels): for each of its input columns, which
  group channel feeds it, through `Concat` offsets, `Upsample`, the SPPF pooling concat, the C2f
  split / concat and every Detect branch.

The rules follow docs/DESIGN.md: C2f.cv1 keeps equal halves (stock `chunk(2)`), Detect outputs are fixed, and
the channels of a Bottleneck shortcut form a *residual stream*: the second half of C2f.cv1 and every
Bottleneck cv2 that adds into it carry the same channels, so they are removed together (`streams=True`,
recorded by each cv2's `residual` link) or not at all (`streams=False`, the seed's rule and the default:
`bench/ranking.py` measured no gain from pruning them on ships, docs/RESULTS.md). A module
the rules do not cover raises `UnsupportedModuleError` naming it, never a silent wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from ultralytics.nn.modules import C2f, SPPF, Bottleneck, Concat, Conv, Detect
from ultralytics.nn.tasks import DetectionModel

DEFAULT_STREAMS = False  # prune residual streams? Measured no better on ships (bench/ranking.py)
Source = tuple[str, int]  # (group name, channel index in that group); group "" is the image input


class UnsupportedModuleError(TypeError):
    """The channel graph meets a module whose channel rules it does not know."""


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of one `Conv` block, scored by its BN gamma.

    `halves == 2` marks C2f.cv1, whose output is chunked in two: both halves must keep equal counts.
    `residual` names the group this one's output is added onto, channel for channel from `offset` on (a
    Bottleneck shortcut): both carry one residual stream, and the Bottleneck's output is their sum.
    """

    name: str  # the BN module name as `model.named_modules()` gives it, e.g. "model.2.m.0.cv1.bn"
    conv: str  # the Conv block that owns it, e.g. "model.2.m.0.cv1"
    size: int
    prunable: bool
    reason: str = ""  # why it is not prunable
    halves: int = 1
    residual: str = ""
    offset: int = 0


@dataclass(frozen=True)
class Consumer:
    """A conv that reads group channels: `inputs[j]` is the source of its input column j."""

    name: str  # the nn.Conv2d module name, e.g. "model.3.conv" or "model.22.cv2.0.2"
    inputs: tuple[Source, ...]
    kernel: tuple[int, int]
    has_bn: bool  # a Conv block (fold constants into its BN) rather than a biased head Conv2d


@dataclass
class ChannelGraph:
    """Channel groups and their consumers of one model, in forward order."""

    groups: dict[str, ChannelGroup] = field(default_factory=dict)
    consumers: dict[str, Consumer] = field(default_factory=dict)

    @property
    def prunable(self) -> list[ChannelGroup]:
        """Groups whose channels may be removed."""
        return [g for g in self.groups.values() if g.prunable]

    def consumers_of(self, group: str) -> list[Consumer]:
        """Every consumer that reads at least one channel of `group`."""
        return [c for c in self.consumers.values() if any(s[0] == group for s in c.inputs)]


class _Tracer:
    """Walks a DetectionModel's layers and fills a ChannelGraph."""

    def __init__(self, streams: bool) -> None:
        self.graph = ChannelGraph()
        self.streams = streams

    def conv(
        self,
        name: str,
        block: nn.Module,
        inputs: list[Source],
        prunable: bool,
        reason: str = "",
        halves: int = 1,
        residual: Source = ("", 0),
    ) -> list[Source]:
        """Record a Conv block as consumer of `inputs` and producer of a new group; return its outputs."""
        if type(block) is not Conv:
            raise UnsupportedModuleError(
                f"{name} is {type(block).__name__}; yoloslim prunes only plain Conv blocks here"
            )
        if not isinstance(getattr(block, "bn", None), nn.BatchNorm2d):
            raise UnsupportedModuleError(
                f"{name} has no BatchNorm: the model is fused (conv and BN merged, as .val() and .predict() leave "
                "it), so no gamma scores its channels; load the checkpoint again from its file"
            )
        self.consumer(f"{name}.conv", block.conv, inputs, has_bn=True)
        group = ChannelGroup(f"{name}.bn", name, block.conv.out_channels, prunable, reason, halves, *residual)
        self.graph.groups[group.name] = group
        return [(group.name, j) for j in range(group.size)]

    def consumer(self, name: str, conv: nn.Conv2d, inputs: list[Source], has_bn: bool) -> None:
        """Record an nn.Conv2d that reads `inputs`."""
        if conv.groups != 1:
            raise UnsupportedModuleError(
                f"{name} is a grouped/depthwise conv (groups={conv.groups}); not supported yet"
            )
        if conv.in_channels != len(inputs):
            raise UnsupportedModuleError(f"{name} reads {conv.in_channels} channels but the graph traced {len(inputs)}")
        self.graph.consumers[name] = Consumer(name, tuple(inputs), tuple(conv.kernel_size), has_bn)

    def tie(self, sources: list[Source], reason: str) -> None:
        """Mark the groups behind `sources` as not prunable (they feed a residual add)."""
        for name in {s[0] for s in sources if s[0]}:
            g = self.graph.groups[name]
            if g.prunable:
                self.graph.groups[name] = ChannelGroup(g.name, g.conv, g.size, False, reason, g.halves)

    def c2f(self, name: str, m: C2f, x: list[Source]) -> list[Source]:
        """C2f: cv1 chunked in two halves, Bottlenecks chained on the second half, all concatenated into cv2."""
        for k, b in enumerate(m.m):
            if type(b) is not Bottleneck:
                raise UnsupportedModuleError(
                    f"{name}.m.{k} is {type(b).__name__}; only C2f with Bottleneck is supported"
                )
        y = self.conv(f"{name}.cv1", m.cv1, x, prunable=True, halves=2)
        ys = [y[: m.c], y[m.c :]]
        for k, b in enumerate(m.m):
            h = self.conv(f"{name}.m.{k}.cv1", b.cv1, ys[-1], prunable=True)
            if not b.add:
                out = self.conv(f"{name}.m.{k}.cv2", b.cv2, h, prunable=True)
            elif self.streams:  # the sum is attributed to cv2, which records the stream it adds onto
                out = self.conv(f"{name}.m.{k}.cv2", b.cv2, h, prunable=True, residual=ys[-1][0])
            else:
                reason = "tied to the Bottleneck shortcut add (residual streams off)"
                out = self.conv(f"{name}.m.{k}.cv2", b.cv2, h, False, reason)
                self.tie(ys[-1], reason)
            ys.append(out)
        return self.conv(f"{name}.cv2", m.cv2, [s for part in ys for s in part], prunable=True)

    def sppf(self, name: str, m: SPPF, x: list[Source]) -> list[Source]:
        """SPPF: cv1, then repeated max-pools of it, all concatenated into cv2."""
        if getattr(m, "add", False):
            raise UnsupportedModuleError(f"{name} is an SPPF with a shortcut; not supported yet")
        y = self.conv(f"{name}.cv1", m.cv1, x, prunable=True)
        return self.conv(f"{name}.cv2", m.cv2, y * (getattr(m, "n", 3) + 1), prunable=True)

    def detect(self, name: str, m: Detect, xs: list[list[Source]]) -> None:
        """Detect: per level, two Conv blocks then a fixed-output 1x1 conv, for boxes (cv2) and classes (cv3)."""
        if getattr(m, "end2end", False):
            raise UnsupportedModuleError(f"{name} is an end-to-end Detect head (one2one branches); not supported yet")
        for branch in ("cv2", "cv3"):
            for i, x in enumerate(xs):
                seq = getattr(m, branch)[i]
                if len(seq) != 3 or not isinstance(seq[2], nn.Conv2d):
                    raise UnsupportedModuleError(f"{name}.{branch}.{i} is not Conv, Conv, Conv2d (a YOLOv8 head)")
                h = self.conv(f"{name}.{branch}.{i}.0", seq[0], x, prunable=True)
                h = self.conv(f"{name}.{branch}.{i}.1", seq[1], h, prunable=True)
                self.consumer(f"{name}.{branch}.{i}.2", seq[2], h, has_bn=False)

    def trace(self, model: DetectionModel) -> ChannelGraph:
        """Trace every layer of `model.model`, following each layer's `f` (from) indices."""
        outputs: list[list[Source]] = []
        x: list[Source] = [("", j) for j in range(input_channels(model))]
        for i, m in enumerate(model.model):
            name = f"model.{i}"
            f = m.f
            if isinstance(f, int):
                x = outputs[f] if f != -1 else x
                xs = [x]
            else:
                xs = [x if j == -1 else outputs[j] for j in f]
            kind = type(m)
            if kind is Conv:
                x = self.conv(name, m, xs[0], prunable=True)
            elif kind is C2f:
                x = self.c2f(name, m, xs[0])
            elif kind is SPPF:
                x = self.sppf(name, m, xs[0])
            elif kind is nn.Upsample:
                x = xs[0]
            elif kind is Concat:
                if m.d != 1:
                    raise UnsupportedModuleError(
                        f"{name} concatenates along dim {m.d}; only channels (1) are supported"
                    )
                x = [s for part in xs for s in part]
            elif kind is Detect:
                self.detect(name, m, xs)
                x = []
            else:
                raise UnsupportedModuleError(
                    f"{name} is {kind.__name__}, which yoloslim's channel graph does not support "
                    "(supported: YOLOv8 detection with Conv, C2f, Bottleneck, SPPF, Upsample, Concat, Detect)"
                )
            outputs.append(x)
        return self.graph


def input_channels(model: nn.Module) -> int:
    """The image channels a model reads: `channels` in its yaml (Ultralytics 8.3+), `ch` in older checkpoints."""
    yaml = getattr(model, "yaml", None) or {}
    return int(yaml.get("channels", yaml.get("ch", 3)))


def build_graph(model: nn.Module, streams: bool = DEFAULT_STREAMS) -> ChannelGraph:
    """The channel graph of a YOLOv8 `DetectionModel` of any scale (n to x, read from the model itself).

    `streams=True` makes the residual streams of Bottleneck shortcuts prunable units; `False` leaves them whole.
    """
    if not isinstance(model, DetectionModel):
        raise UnsupportedModuleError(f"expected an Ultralytics DetectionModel, got {type(model).__name__}")
    return _Tracer(streams).trace(model)


def prunable_bn_names(model: nn.Module, streams: bool = DEFAULT_STREAMS) -> list[str]:
    """Names (as `model.named_modules()` gives them) of the BNs whose gammas score prunable channels."""
    return [g.name for g in build_graph(model, streams).prunable]
