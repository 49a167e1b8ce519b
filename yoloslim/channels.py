"""The channel graph of an Ultralytics YOLO model: the single source of truth for sparsity training and pruning.

Every BatchNorm after a convolution scores the output channels of that convolution (Liu et al. 2017,
"Learning Efficient Convolutional Networks through Network Slimming", arXiv:1708.06519). This module
traces a `DetectionModel` (or its segment, pose and OBB subclasses) layer by layer and records, as plain data:

- each *channel group* (one BN and the conv before it): its size, whether it may be pruned, and why not;
- each *consumer* (every conv that reads a group's channels): for each of its input columns, which
  group channel feeds it, through `Concat` offsets, `Upsample`, the SPPF pooling concat, C2f-style
  splits and every head branch.

The graph is built by a registry of small per-module rules (`RULES`, one per Ultralytics block: which of its
output channels can be pruned, which are tied by adds, chunks, groups or attention heads, and which convs read
them), so supporting a block is one rule and one test. The rules follow docs/DESIGN.md: C2f.cv1 keeps equal
halves (stock `chunk(2)`), head outputs are fixed, a depthwise conv's channels follow its input channel for
channel, attention widths stay fixed (q, k and v are laid out by `num_heads` and `head_dim`), and the
channels of a Bottleneck shortcut form a *residual stream*: the second half of C2f.cv1 and every Bottleneck cv2
that adds into it carry the same channels, so they are removed together (`streams=True`, recorded by each
cv2's `residual` link) or not at all (`streams=False`, the seed's rule and the default: `bench/ranking.py`
measured no gain from pruning them on ships, docs/RESULTS.md). A module no rule covers raises
`UnsupportedModuleError` naming it and its layer, never a silent wrong answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn
from ultralytics.nn.modules.block import C2, C2PSA, C3, SPPF, Attention, Bottleneck, C2f, C3k, C3k2, Proto, Proto26
from ultralytics.nn.modules.block import A2C2f, AAttn, ABlock, PSABlock
from ultralytics.nn.modules.conv import Concat, Conv, DWConv
from ultralytics.nn.modules.head import OBB, OBB26, Detect, Pose, Pose26, Segment, Segment26
from ultralytics.nn.tasks import DetectionModel

from yoloslim.settings import DEFAULT_STREAMS

Source = tuple[str, int]  # (group name, channel index in that group); group "" is a fixed channel (the image, or
# the output of a conv without BN, which no gamma scores)
FIXED = ""


class UnsupportedModuleError(TypeError):
    """The channel graph meets a module whose channel rules it does not know."""


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of one `Conv` block, scored by its BN gamma.

    `halves == 2` marks a C2f.cv1 (or C2.cv1), whose output is chunked in two: both halves keep equal counts.
    `residual` names the group this one's output is added onto, channel for channel from `offset` on (a
    Bottleneck shortcut): both carry one residual stream, and the Bottleneck's output is their sum.
    `follows` names the group a depthwise conv reads, channel for channel from `offset` on: channel j of this
    group exists only while channel `offset + j` of that one does.
    """

    name: str  # the BN module name as `model.named_modules()` gives it, e.g. "model.2.m.0.cv1.bn"
    conv: str  # the Conv block that owns it, e.g. "model.2.m.0.cv1"
    size: int
    prunable: bool
    reason: str = ""  # why it is not prunable
    halves: int = 1
    residual: str = ""
    offset: int = 0
    follows: str = ""

    @property
    def link(self) -> str:
        """The group whose channels this one must keep in step with (a stream it adds onto, or a depthwise input)."""
        return self.residual or self.follows


@dataclass(frozen=True)
class Consumer:
    """A conv that reads group channels: `inputs[j]` is the source of its input column j (for a depthwise conv,
    of its channel j)."""

    name: str  # the conv module name, e.g. "model.3.conv" or "model.22.cv2.0.2"
    inputs: tuple[Source, ...]
    kernel: tuple[int, int]
    has_bn: bool  # a Conv block (fold constants into its BN) rather than a biased head Conv2d
    depthwise: bool = False


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


Rule = Callable[["_Tracer", str, nn.Module, list[list[Source]]], list[Source]]
RULES: dict[type[nn.Module], Rule] = {}  # exact module type -> its rule (a subclass may wire itself differently)


def rule(*kinds: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register `fn(tracer, name, module, inputs) -> outputs` as the channel rule of these module types.

    `inputs` holds the sources of each tensor the module reads (one list per input, as its `f` gives them);
    the rule records the module's groups and consumers on the tracer and returns the sources of its output.
    """

    def register(fn: Rule) -> Rule:
        for kind in kinds:
            RULES[kind] = fn
        return fn

    return register


class _Tracer:
    """Walks a model's layers through `RULES` and fills a ChannelGraph."""

    def __init__(self, streams: bool) -> None:
        self.graph = ChannelGraph()
        self.streams = streams

    def block(self, name: str, m: nn.Module, inputs: list[list[Source]]) -> list[Source]:
        """Apply the rule of `m`'s type; a type without one is named in the error."""
        if (fn := RULES.get(type(m))) is None:
            supported = ", ".join(sorted(k.__name__ for k in RULES))
            raise UnsupportedModuleError(
                f"{name} is {type(m).__name__}, which yoloslim's channel graph has no rule for (supported: {supported})"
            )
        return fn(self, name, m, inputs)

    def conv(
        self,
        name: str,
        block: nn.Module,
        inputs: list[Source],
        prunable: bool = True,
        reason: str = "",
        *,
        halves: int = 1,
        residual: Source = (FIXED, 0),
    ) -> list[Source]:
        """Record a Conv block as consumer of `inputs` and producer of a new group; return its outputs."""
        if not isinstance(getattr(block, "bn", None), nn.BatchNorm2d):
            raise UnsupportedModuleError(
                f"{name} has no BatchNorm: the model is fused (conv and BN merged, as .val() and .predict() leave "
                "it), so no gamma scores its channels; load the checkpoint again from its file"
            )
        self.consumer(f"{name}.conv", block.conv, inputs, has_bn=True)
        group = ChannelGroup(f"{name}.bn", name, block.conv.out_channels, prunable, reason, halves, *residual)
        self.graph.groups[group.name] = group
        return [(group.name, j) for j in range(group.size)]

    def consumer(self, name: str, conv: nn.Module, inputs: list[Source], has_bn: bool) -> None:
        """Record a conv that reads `inputs`: a dense conv, or a depthwise one (one input channel per output)."""
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
        if conv.groups != 1 and not depthwise:
            raise UnsupportedModuleError(f"{name} is a grouped conv (groups={conv.groups}); not supported")
        if conv.in_channels != len(inputs):
            raise UnsupportedModuleError(f"{name} reads {conv.in_channels} channels but the graph traced {len(inputs)}")
        self.graph.consumers[name] = Consumer(name, tuple(inputs), tuple(conv.kernel_size), has_bn, depthwise)

    def depthwise(self, name: str, block: nn.Module, inputs: list[Source]) -> list[Source]:
        """A depthwise Conv block: its channel j exists only with input channel j. When the input is one whole
        group its channels follow that group's (pruned together); otherwise both stay whole."""
        out = self.conv(name, block, inputs)
        g = self.graph.groups[f"{name}.bn"]
        source = self.graph.groups.get(inputs[0][0])
        if source is not None and source.halves == 1 and inputs == [(source.name, j) for j in range(source.size)]:
            self.graph.groups[g.name] = replace(g, follows=source.name)
        else:
            self.tie(inputs + out, "read channel for channel by a depthwise conv whose input is not one whole group")
        return out

    def tie(self, sources: list[Source], reason: str) -> None:
        """Mark the groups behind `sources` as not prunable (e.g. they feed an add that cannot be narrowed)."""
        for name in {s[0] for s in sources if s[0]}:
            g = self.graph.groups[name]
            if g.prunable:
                self.graph.groups[name] = replace(g, prunable=False, reason=reason)

    def shortcut(self, name: str, block: nn.Module, inputs: list[Source], onto: list[Source]) -> list[Source]:
        """A Conv block whose output is added onto `onto` (a Bottleneck's cv2): with streams, one unit with the
        stream when `onto` is a run of one group's channels; otherwise both are tied whole. The sum is attributed
        to the new group."""
        first, offset = onto[0]
        if self.streams and first and onto == [(first, offset + j) for j in range(len(onto))]:
            return self.conv(name, block, inputs, residual=(first, offset))
        reason = "tied to a shortcut add (residual streams off)" if not self.streams else "tied to a shortcut add"
        out = self.conv(name, block, inputs, False, reason)
        self.tie(onto, reason)
        return out

    def settle(self) -> ChannelGraph:
        """Groups linked (streams, depthwise) to a group that is not prunable cannot be pruned either."""
        changed = True
        while changed:
            changed = False
            for g in list(self.graph.groups.values()):
                if not g.link:
                    continue
                other = self.graph.groups[g.link]
                if g.prunable != other.prunable:
                    reason = g.reason or other.reason
                    self.tie([(g.name, 0), (other.name, 0)], f"linked to a group that stays whole ({reason})")
                    changed = True
        return self.graph

    def trace(self, model: DetectionModel) -> ChannelGraph:
        """Trace every layer of `model.model`, following each layer's `f` (from) indices."""
        outputs: list[list[Source]] = []
        x: list[Source] = [(FIXED, j) for j in range(input_channels(model))]
        for i, m in enumerate(model.model):
            f = m.f
            if isinstance(f, int):
                xs = [x if f == -1 else outputs[f]]
            else:
                xs = [x if j == -1 else outputs[j] for j in f]
            x = self.block(f"model.{i}", m, xs)
            outputs.append(x)
        return self.settle()


@rule(Conv)
def _conv(t: _Tracer, name: str, m: Conv, xs: list[list[Source]]) -> list[Source]:
    """A Conv block (conv, BN, act); a depthwise one follows its input."""
    return t.depthwise(name, m, xs[0]) if m.conv.groups > 1 else t.conv(name, m, xs[0])


@rule(DWConv)
def _dwconv(t: _Tracer, name: str, m: DWConv, xs: list[list[Source]]) -> list[Source]:
    """DWConv (groups = gcd(c1, c2)): depthwise when c1 == c2, the only form the YOLO heads use."""
    if m.conv.groups == 1:
        return t.conv(name, m, xs[0])
    return t.depthwise(name, m, xs[0])


@rule(nn.Conv2d, nn.ConvTranspose2d)
def _plain_conv(t: _Tracer, name: str, m: nn.Module, xs: list[list[Source]]) -> list[Source]:
    """A conv without BN (a head's output conv, Proto's upsampling): it reads channels, its outputs are fixed."""
    t.consumer(name, m, xs[0], has_bn=False)
    return [(FIXED, j) for j in range(m.out_channels)]


@rule(nn.Upsample, nn.MaxPool2d, nn.Identity)
def _same_channels(t: _Tracer, name: str, m: nn.Module, xs: list[list[Source]]) -> list[Source]:
    """Spatial-only layers keep their input's channels."""
    return xs[0]


@rule(Concat)
def _concat(t: _Tracer, name: str, m: Concat, xs: list[list[Source]]) -> list[Source]:
    """Channel concat: the inputs' sources one after another."""
    if m.d != 1:
        raise UnsupportedModuleError(f"{name} concatenates along dim {m.d}; only channels (1) are supported")
    return [s for part in xs for s in part]


@rule(nn.Sequential)
def _sequential(t: _Tracer, name: str, m: nn.Sequential, xs: list[list[Source]]) -> list[Source]:
    """Children applied in turn."""
    x = xs[0]
    for k, child in enumerate(m):
        x = t.block(f"{name}.{k}", child, [x])
    return x


@rule(Bottleneck)
def _bottleneck(t: _Tracer, name: str, m: Bottleneck, xs: list[list[Source]]) -> list[Source]:
    """cv1 then cv2, whose output is added onto the input when `add` (a residual stream)."""
    h = t.conv(f"{name}.cv1", m.cv1, xs[0])
    if m.cv2.conv.groups != 1:
        raise UnsupportedModuleError(f"{name}.cv2 is a grouped conv (g={m.cv2.conv.groups}); not supported")
    return t.shortcut(f"{name}.cv2", m.cv2, h, xs[0]) if m.add else t.conv(f"{name}.cv2", m.cv2, h)


@rule(C2f, C3k2)
def _c2f(t: _Tracer, name: str, m: C2f, xs: list[list[Source]]) -> list[Source]:
    """C2f / C3k2: cv1 chunked in two halves, blocks chained on the second half, all concatenated into cv2."""
    y = t.conv(f"{name}.cv1", m.cv1, xs[0], halves=2)
    ys = [y[: m.c], y[m.c :]]
    for k, inner in enumerate(m.m):
        ys.append(t.block(f"{name}.m.{k}", inner, [ys[-1]]))
    return t.conv(f"{name}.cv2", m.cv2, [s for part in ys for s in part])


@rule(C2)
def _c2(t: _Tracer, name: str, m: C2, xs: list[list[Source]]) -> list[Source]:
    """C2: cv1 chunked in two halves, Bottlenecks on the first, both concatenated into cv2."""
    y = t.conv(f"{name}.cv1", m.cv1, xs[0], halves=2)
    a = t.block(f"{name}.m", m.m, [y[: m.c]])
    return t.conv(f"{name}.cv2", m.cv2, a + y[m.c :])


@rule(C3, C3k)
def _c3(t: _Tracer, name: str, m: C3, xs: list[list[Source]]) -> list[Source]:
    """C3 / C3k: Bottlenecks on cv1, concatenated with cv2 (both read the input) into cv3."""
    a = t.block(f"{name}.m", m.m, [t.conv(f"{name}.cv1", m.cv1, xs[0])])
    return t.conv(f"{name}.cv3", m.cv3, a + t.conv(f"{name}.cv2", m.cv2, xs[0]))


@rule(SPPF)
def _sppf(t: _Tracer, name: str, m: SPPF, xs: list[list[Source]]) -> list[Source]:
    """SPPF: cv1, then repeated max-pools of it, all concatenated into cv2; YOLO26's adds the input back."""
    y = t.conv(f"{name}.cv1", m.cv1, xs[0])
    out = t.conv(f"{name}.cv2", m.cv2, y * (getattr(m, "n", 3) + 1))
    if getattr(m, "add", False):
        t.tie(xs[0] + out, "tied to the SPPF shortcut add")
    return out


@rule(C2PSA)
def _c2psa(t: _Tracer, name: str, m: C2PSA, xs: list[list[Source]]) -> list[Source]:
    """C2PSA: cv1 split in two equal halves (the second runs through PSABlocks), concatenated into cv2."""
    reason = "C2PSA splits cv1 into two equal halves and the second carries the PSABlocks' attention stream"
    y = t.conv(f"{name}.cv1", m.cv1, xs[0], False, reason)
    return t.conv(f"{name}.cv2", m.cv2, y[: m.c] + t.block(f"{name}.m", m.m, [y[m.c :]]))


@rule(PSABlock)
def _psablock(t: _Tracer, name: str, m: PSABlock, xs: list[list[Source]]) -> list[Source]:
    """PSABlock: attention then a two-conv FFN, each added back when `add`; the FFN's hidden width is prunable."""
    a = t.block(f"{name}.attn", m.attn, xs)
    if m.add:
        t.tie(xs[0] + a, "tied to the PSABlock's residual add")
    out = t.block(f"{name}.ffn", m.ffn, [a])
    if m.add:
        t.tie(a + out, "tied to the PSABlock's residual add")
    return out


@rule(Attention)
def _attention(t: _Tracer, name: str, m: Attention, xs: list[list[Source]]) -> list[Source]:
    """Attention (C2PSA): per head, qkv holds q and k of `key_dim` channels and v of `head_dim`."""
    return _heads(t, name, m, xs[0], m.key_dim, m.head_dim)


@rule(AAttn)
def _area_attention(t: _Tracer, name: str, m: AAttn, xs: list[list[Source]]) -> list[Source]:
    """Area attention (YOLO12's A2C2f): per head, qkv holds q, k and v of `head_dim` channels each."""
    return _heads(t, name, m, xs[0], m.head_dim, m.head_dim)


def _heads(t: _Tracer, name: str, m: nn.Module, x: list[Source], key_dim: int, head_dim: int) -> list[Source]:
    """qkv's channels are laid out per head as (q, k, v), so they stay whole; `pe` is depthwise over v; `proj`
    reads their sum (attributed to pe's channels)."""
    qkv = t.conv(f"{name}.qkv", m.qkv, x, False, "q, k and v widths are fixed by num_heads and head_dim")
    per_head = 2 * key_dim + head_dim
    v = [qkv[h * per_head + 2 * key_dim + d] for h in range(m.num_heads) for d in range(head_dim)]
    pe = t.conv(f"{name}.pe", m.pe, v, False, "depthwise over v, whose width the heads fix")
    return t.conv(f"{name}.proj", m.proj, pe)


@rule(ABlock)
def _ablock(t: _Tracer, name: str, m: ABlock, xs: list[list[Source]]) -> list[Source]:
    """ABlock: area attention then a two-conv MLP, each added back; the MLP's hidden width is prunable."""
    a = t.block(f"{name}.attn", m.attn, xs)
    t.tie(xs[0] + a, "tied to the ABlock's residual add")
    out = t.block(f"{name}.mlp", m.mlp, [a])
    t.tie(a + out, "tied to the ABlock's residual add")
    return out


@rule(A2C2f)
def _a2c2f(t: _Tracer, name: str, m: A2C2f, xs: list[list[Source]]) -> list[Source]:
    """A2C2f: cv1, blocks (ABlock pairs or C3k) chained on it, all concatenated into cv2, whose output is scaled
    by `gamma` and added onto the input in the residual form."""
    ys = [t.conv(f"{name}.cv1", m.cv1, xs[0])]
    for k, inner in enumerate(m.m):
        ys.append(t.block(f"{name}.m.{k}", inner, [ys[-1]]))
    out = t.conv(f"{name}.cv2", m.cv2, [s for part in ys for s in part])
    if m.gamma is not None:
        t.tie(xs[0] + out, "tied to the A2C2f residual add (its layer-scale gamma is per channel)")
    return out


HEAD_BRANCHES = ("cv2", "cv3", "cv4", "one2one_cv2", "one2one_cv3", "one2one_cv4")
# output convs that read a branch's last Conv block (Pose26 splits keypoints and their sigmas)
HEAD_READERS = {"cv4": ("cv4_kpts", "cv4_sigma"), "one2one_cv4": ("one2one_cv4_kpts", "one2one_cv4_sigma")}


@rule(Detect, Segment, Pose, OBB, Segment26, Pose26, OBB26)
def _head(t: _Tracer, name: str, m: Detect, xs: list[list[Source]]) -> list[Source]:
    """Detect and its task heads: per level, each branch (boxes, classes, masks / keypoints / angles, and the
    end-to-end one2one copies) is a chain of Conv blocks ending in fixed-output convs; Segment adds its Proto."""
    for branch in HEAD_BRANCHES:
        if getattr(m, branch, None) is None:
            continue
        for i, x in enumerate(xs):
            out = t.block(f"{name}.{branch}.{i}", getattr(m, branch)[i], [x])
            for reader in HEAD_READERS.get(branch, ()):
                if getattr(m, reader, None) is not None:
                    t.block(f"{name}.{reader}.{i}", getattr(m, reader)[i], [out])
    if getattr(m, "proto", None) is not None:
        t.block(f"{name}.proto", m.proto, xs)
    return []


@rule(Proto)
def _proto(t: _Tracer, name: str, m: Proto, xs: list[list[Source]]) -> list[Source]:
    """Proto (reads the first level): cv1, a transposed-conv upsample, cv2, then cv3 with the fixed mask count."""
    return _proto_tail(t, name, m, xs[0])


def _proto_tail(t: _Tracer, name: str, m: Proto, x: list[Source]) -> list[Source]:
    reason = "read by a transposed conv, into which a removed channel's constant output cannot be folded"
    y = t.conv(f"{name}.cv1", m.cv1, x, False, reason)
    y = t.conv(f"{name}.cv2", m.cv2, t.block(f"{name}.upsample", m.upsample, [y]))
    return t.conv(f"{name}.cv3", m.cv3, y, False, "mask prototypes: a fixed output")


@rule(Proto26)
def _proto26(t: _Tracer, name: str, m: Proto26, xs: list[list[Source]]) -> list[Source]:
    """Proto26: each coarser level refined to the first's width and added onto it, fused, then Proto; a
    training-only semantic branch reads the sum too."""
    for i, f in enumerate(m.feat_refine):
        t.tie(xs[0] + t.conv(f"{name}.feat_refine.{i}", f, xs[i + 1]), "added onto the first level in Proto26")
    if getattr(m, "semseg", None) is not None:
        t.block(f"{name}.semseg", m.semseg, [xs[0]])
    return _proto_tail(t, name, m, t.conv(f"{name}.feat_fuse", m.feat_fuse, xs[0]))


def input_channels(model: nn.Module) -> int:
    """The image channels a model reads: `channels` in its yaml (Ultralytics 8.3+), `ch` in older checkpoints."""
    yaml = getattr(model, "yaml", None) or {}
    return int(yaml.get("channels", yaml.get("ch", 3)))


# graphs traced in this process, by what decides them (`_architecture`): a command traces a model once, however many
# steps ask for its graph (ranking, Taylor scores on a copy, the prune of a copy, the sparsity check)
_GRAPHS: dict[tuple, ChannelGraph] = {}
_KEPT = 8  # the graphs of the last few architectures; a model cut to a new width has a new one


def _architecture(model: nn.Module, streams: bool) -> tuple:
    """What a model's channel graph depends on: its yaml (the wiring and every block's flags), the type of each
    module by name, and every parameter's shape (the widths, which a cut in place changes)."""
    modules = tuple((name, type(m).__name__) for name, m in model.named_modules())
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    return streams, json.dumps(getattr(model, "yaml", None), sort_keys=True, default=str), modules, shapes


def build_graph(model: nn.Module, streams: bool = DEFAULT_STREAMS) -> ChannelGraph:
    """The channel graph of an Ultralytics `DetectionModel` (detect, segment, pose or OBB; any scale, read from
    the model itself), traced once per architecture: later calls, on the model or on a copy of it, return the same
    graph (treat it as read-only).

    `streams=True` makes the residual streams of Bottleneck shortcuts prunable units; `False` leaves them whole.
    """
    if not isinstance(model, DetectionModel):
        raise UnsupportedModuleError(f"expected an Ultralytics DetectionModel, got {type(model).__name__}")
    key = _architecture(model, streams)
    if key not in _GRAPHS:
        _GRAPHS[key] = _Tracer(streams).trace(model)
        while len(_GRAPHS) > _KEPT:
            del _GRAPHS[next(iter(_GRAPHS))]
    return _GRAPHS[key]


def prunable_bn_names(model: nn.Module, streams: bool = DEFAULT_STREAMS) -> list[str]:
    """Names (as `model.named_modules()` gives them) of the BNs whose gammas score prunable channels.

    Args:
        model: an Ultralytics detection-family model (detect, segment, pose, OBB), not fused.
        streams: include the BNs of Bottleneck residual streams.

    Returns:
        The BN names, in forward order.

    Raises:
        UnsupportedModuleError: a block no channel rule covers, or a fused model.

    Example:
        >>> prunable_bn_names(YOLO("yolov8n.yaml").model)[:2]
        ['model.0.bn', 'model.1.bn']
    """
    return [g.name for g in build_graph(model, streams).prunable]
