"""Repair a pruned model without training: re-fit the convs after the cut by least squares on calibration images.

Removing channels changes what every later conv reads. Channel-pruning work on classifiers re-fits the layer after
the cut so that its output on a few unlabelled images matches the unpruned network's (He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks", arXiv:1707.06168; Luo et al. 2017, ThiNet, arXiv:1707.06342).
Here that is done for a whole YOLO, sequentially as GPTQ quantizes a network layer by layer (Frantar et al. 2022,
arXiv:2210.17323): the inputs of each fit come from the already pruned and re-fitted network, its targets from the
original, so errors do not compound down the network (docs/DESIGN.md, "Train-free pruning").

- Every dense conv (`groups == 1`) whose input differs from the original's is re-fitted by ridge least squares over
  the input channels it keeps: `W = (X^T X + lambda I)^-1 X^T Y`, with `X` the im2col of its input at sampled
  positions and `Y` the original conv's output there (before its BN). The Gram matrices are accumulated over the
  images (float32 within a layer, solved in float64); the activations are never all held. The ridge pulls the fit
  towards the cut conv's own weights, not towards 0. An unregularised intercept goes into the BN's running mean, or
  into a head conv's bias: it replaces the fold of the removed channels' constants for that conv.
- Depthwise and grouped convs are left as they are (they keep the channels they read, channel for channel).
- The network is run one Ultralytics layer at a time over all calibration images: the outputs later layers read are
  held in float16 for both networks (the frontier of the forward pass), so each fit runs only its own layer. The
  original's layer runs once, keeping each conv's output at sampled positions; the pruned layer runs once per
  level of convs that do not read each other (the head's branches are fitted side by side).
- `recalibrate_bn` re-estimates every BN's running statistics through the pruned network (a separate step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader
from ultralytics.nn.modules.block import DFL
from ultralytics.nn.tasks import guess_model_task
from ultralytics.utils import LOGGER, TQDM, colorstr

from yoloslim.data import train_split_as_validated
from yoloslim.settings import DEFAULT_CALIB_IMAGES, DEFAULT_RECALIBRATE_BN, DEFAULT_RECONSTRUCT

BATCH = 16  # images per forward pass of a layer
HELD_OUT = 4  # every 4th calibration image checks each fit instead of making it
RIDGE = 1e-2  # the ridge penalty, as a share of the mean diagonal of X^T X (docs/DESIGN.md, "Train-free pruning")
FOCUS = 0.5  # share of each conv's sampled positions drawn where the original detector sees objects (same section)


@dataclass(frozen=True)
class ConvFit:
    """One re-fitted conv: its input channels (original, kept) and the relative error of its output on the calibration
    images before and after the fit (squared error over the output's variance around its per-channel mean)."""

    name: str
    inputs: tuple[int, int]
    before: float
    after: float


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the layer is not run."""


def calibration_images(model: nn.Module, data: str, imgsz: int, n: int) -> torch.Tensor:
    """The first `n` training images of `data` in file order, as validation sees them (letterboxed to `imgsz`, no
    augmentation; the builder Taylor scoring and INT8 calibration share), as one uint8 tensor. No labels are read."""
    args = get_cfg(overrides={"task": guess_model_task(model), "imgsz": imgsz, "data": data})
    dataset = train_split_as_validated(args, BATCH, stride=int(model.stride.max()))
    loader = build_dataloader(dataset, BATCH, workers=0, shuffle=False, device="cpu")
    images, count = [], 0
    for batch in loader:
        images.append(batch["img"][: n - count])
        count += len(images[-1])
        if count >= n:
            break
    if not images:
        raise ValueError(f"{data} has no training images to calibrate on: give a dataset with images")
    return torch.cat(images)


class _Frontier:
    """The outputs of an Ultralytics model's layers that later layers still read, per batch of images, in float16."""

    def __init__(self, model: nn.Module, images: torch.Tensor) -> None:
        self.layers = list(model.model)
        self.last_use = {}
        for i, layer in enumerate(self.layers):
            for j in [layer.f] if isinstance(layer.f, int) else layer.f:
                self.last_use[i - 1 if j == -1 else j] = i
        self.outputs: dict[int, list[torch.Tensor]] = {-1: list(images.split(BATCH))}
        self.n_batches = len(self.outputs[-1])

    def inputs(self, i: int, k: int) -> Any:
        """What layer `i` reads on batch `k` (float32), as `DetectionModel._predict_once` gathers it."""
        f = self.layers[i].f
        get = self._get_image if i == 0 else self._get
        if isinstance(f, int):
            return get(i - 1 if f == -1 else f, k)
        return [get(i - 1 if j == -1 else j, k) for j in f]

    def _get(self, j: int, k: int) -> torch.Tensor:
        return self.outputs[j][k].float()

    def _get_image(self, j: int, k: int) -> torch.Tensor:
        return self.outputs[-1][k].float() / 255

    def advance(self, i: int, on_batch: Any = None, needed: bool = False) -> None:
        """Run layer `i` on every batch (calling `on_batch(k)` first) if a later layer reads its output or `needed`;
        keep the output if read later, and drop what no later layer reads."""
        if i in self.last_use or needed:
            outputs = []
            for k in range(self.n_batches):
                if on_batch:
                    on_batch(k)
                outputs.append(self.layers[i](self.inputs(i, k)))
            if i in self.last_use:
                self.outputs[i] = [o.half() for o in outputs]
        for j in [j for j in self.outputs if j != -1 and self.last_use.get(j, -1) <= i]:
            del self.outputs[j]


class _Gram:
    """`X^T X`, `X^T Y` and the sum of `Y^2` of one conv's least-squares problem, with a column of ones in `X` for
    the intercept (accumulated in float32 over a layer's batches, solved in float64)."""

    def __init__(self) -> None:
        self.xx: torch.Tensor | None = None
        self.xy: torch.Tensor | None = None
        self.yy: torch.Tensor | None = None

    def __add__(self, other: _Gram) -> _Gram:
        """Both problems' rows together (one that has none adds nothing)."""
        if other.xx is None:
            return self
        total = _Gram()
        total.xx, total.xy, total.yy = self.xx + other.xx, self.xy + other.xy, self.yy + other.yy
        return total

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: `x` (rows x inputs, the intercept's column of ones appended here) against `y` (rows x outputs)."""
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        if self.xx is None:
            self.xx, self.xy, self.yy = x.T @ x, x.T @ y, y.square().sum(0)
        else:
            self.xx.addmm_(x.T, x)
            self.xy.addmm_(x.T, y)
            self.yy += y.square().sum(0)

    def solve(self, ridge: float, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The ridge solution `[W; b]` (inputs x outputs, the intercept last and not regularised), shrunk towards
        `prior` (a solution of the same shape) instead of towards 0 where given."""
        xx = self.xx.double()
        d = len(xx) - 1
        penalty = torch.zeros(d + 1, dtype=torch.float64)
        penalty[:d] = ridge * xx.diagonal()[:d].mean().clamp_min(1e-12)
        system = xx + torch.diag(penalty)
        factor, info = torch.linalg.cholesky_ex(system)
        xy = self.xy.double() + (penalty[:, None] * prior if prior is not None else 0)
        return torch.cholesky_solve(xy, factor) if info == 0 else torch.linalg.lstsq(system, xy).solution

    def error(self, w: torch.Tensor) -> float:
        """Squared error of the prediction `X w` over the target's variance around its per-channel mean."""
        xx, xy, yy = self.xx.double(), self.xy.double(), self.yy.double()
        sse = yy.sum() - 2 * (w * xy).sum() + (w * (xx @ w)).sum()
        variance = (yy - xy[-1].square() / xx[-1, -1]).sum()
        return float(sse.clamp_min(0) / variance.clamp_min(1e-12))


def _columns(conv: nn.Conv2d, x: torch.Tensor, picks: torch.Tensor, width: int) -> torch.Tensor:
    """The im2col rows of `x` for `conv` at the flat output positions `picks` (images x positions, each image its
    own) of an output `width` wide: (images, positions, in * kh * kw), in `F.unfold`'s column order, without
    unfolding the other positions."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    rows, cols = (picks // width) * sh, (picks % width) * sw
    image = torch.arange(len(x))[:, None]
    taps = [padded[image, :, rows + a * dh, cols + b * dw] for a in range(kh) for b in range(kw)]  # each (B, P, C)
    return torch.stack(taps, 3).flatten(2)


def _saliency(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor] | None:
    """Where the original detector sees objects: per batch, its highest class score at each cell of its finest
    output grid (every level's scores brought to that grid, the largest kept), float16. None for a model whose head
    gives no class scores this way (then positions are sampled uniformly)."""
    head = model.model[-1]
    if not (hasattr(head, "nc") and hasattr(head, "stride")):
        return None
    maps = []
    for batch in images.split(BATCH):
        y = model(batch.float() / 255)
        y = y[0] if isinstance(y, (list, tuple)) else y
        h, w = batch.shape[2], batch.shape[3]
        sizes = [(h // int(s), w // int(s)) for s in head.stride]
        if not isinstance(y, torch.Tensor) or y.dim() != 3 or y.shape[2] != sum(a * b for a, b in sizes):
            return None
        scores = y[:, 4 : 4 + head.nc].amax(1).split([a * b for a, b in sizes], 1)
        grid = sizes[0]
        levels = [F.interpolate(s.reshape(-1, 1, *size), size=grid, mode="nearest") for s, size in zip(scores, sizes)]
        maps.append(torch.stack(levels).amax(0)[:, 0].half())
    return maps


def _picks(shape: tuple[int, int], n: int, saliency: torch.Tensor | None, focus: float, seed: int) -> torch.Tensor:
    """`n` flat positions per image of an output of `shape` (all, for a smaller one), drawn without replacement:
    uniformly, or `focus` of the weight where the `saliency` maps (images x grid) put objects."""
    h, w = shape
    generator = torch.Generator().manual_seed(seed)
    count = len(saliency) if saliency is not None else 1
    weights = torch.ones(count, h * w)
    if saliency is not None and focus > 0:
        s = saliency.float()[:, None]
        s = F.adaptive_max_pool2d(s, (h, w)) if h <= s.shape[2] else F.interpolate(s, size=(h, w), mode="nearest")
        s = s.flatten(1) / s.flatten(1).sum(1, keepdim=True).clamp_min(1e-12)
        weights = (1 - focus) / (h * w) + focus * s
    return torch.multinomial(weights, min(n, h * w), replacement=False, generator=generator)


def _dense_convs(layer: nn.Module, prefix: str) -> list[tuple[str, nn.Conv2d]]:
    """The dense learned convs of a layer, by their names in the model, in module order (not the fixed decode conv
    of the head's DFL)."""
    fixed = {id(m) for d in layer.modules() if isinstance(d, DFL) for m in d.modules()}
    return [
        (f"{prefix}.{name}", m)
        for name, m in layer.named_modules()
        if type(m) is nn.Conv2d and m.groups == 1 and id(m) not in fixed
    ]


def _levels(layer: nn.Module, convs: list[nn.Conv2d], inputs: Any) -> tuple[list[int], list[int]]:
    """Per conv of `layer`: how many convs of the layer lie before it on its longest input path (0: it reads only
    the layer's inputs), and when it runs (-1: never, at inference). Found exactly by autograd on one image: a conv
    depends on another when its input's graph reaches a scale that multiplies the other's output. Convs of one
    level are re-fitted in one pass."""
    scales = [torch.ones((), requires_grad=True) for _ in convs]
    seen: dict[int, torch.Tensor] = {}

    def hook(index: int):
        def scaled(_m: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
            seen[index] = args[0]
            return out * scales[index]

        return scaled

    handles = [c.register_forward_hook(hook(n)) for n, c in enumerate(convs)]
    try:
        with torch.enable_grad():
            layer([x[:1] for x in inputs] if isinstance(inputs, list) else inputs[:1])
            levels = [0] * len(convs)
            for n in seen:  # in execution order: a conv's inputs ran before it
                if seen[n].requires_grad:
                    grads = torch.autograd.grad(seen[n].sum(), scales, allow_unused=True, retain_graph=True)
                    levels[n] = 1 + max((levels[m] for m, g in enumerate(grads) if g is not None), default=-1)
    finally:
        for h in handles:
            h.remove()
    order = list(seen)
    return levels, [order.index(n) if n in seen else -1 for n in range(len(convs))]


def _bn_name(conv: str) -> str | None:
    """The BN after the conv `conv` when it is a `Conv` block's `.conv` (its channel group's name), else None."""
    return conv.removesuffix(".conv") + ".bn" if conv.endswith(".conv") else None


def _kept_outputs(keep: dict[str, list[int]], name: str, size: int) -> list[int]:
    """The original output channels the pruned conv `name` keeps (all of a conv without BN: the head's outputs)."""
    bn = _bn_name(name)
    return keep.get(bn, list(range(size))) if bn else list(range(size))


@dataclass
class _Problem:
    """One conv's least-squares problem: the original's sampled outputs per batch (the targets), its first batch's
    input (to tell whether the pruned conv reads the same), and the Gram matrices of the images that fit and check."""

    name: str
    conv: nn.Conv2d
    rows: list[int]
    targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # batch -> (positions,
    # the outputs there: images x positions x kept channels)
    first_input: torch.Tensor | None = None
    unchanged: bool = False
    fit: _Gram = field(default_factory=_Gram)
    held: _Gram = field(default_factory=_Gram)


class Reconstruction:
    """Re-fits, layer by layer, every dense conv of `pruned` whose input differs from `original`'s.

    Args:
        original: the unpruned model (left untouched).
        pruned: its pruned copy, modified in place.
        keep: the plan's kept channels (`PrunePlan.keep`), to pair each pruned conv's outputs with the original's.
        positions: output positions sampled per image for each conv's least squares (all where it has fewer).
        focus: the share of them drawn where the original detector sees objects (`_saliency`), in [0, 1).
    """

    def __init__(
        self,
        original: nn.Module,
        pruned: nn.Module,
        keep: dict[str, list[int]],
        positions: int = 64,
        focus: float = FOCUS,
    ) -> None:
        if not 0 <= focus < 1:  # at 1 a map with fewer object cells than positions leaves nothing to draw
            raise ValueError(f"focus={focus!r} must be in [0, 1): the share of positions drawn where objects are")
        self.original, self.pruned, self.keep = original.float().eval(), pruned.float().eval(), keep
        self.positions, self.focus = positions, focus
        self.modules = {"original": dict(original.named_modules()), "pruned": dict(pruned.named_modules())}
        self.saliency: list[torch.Tensor] | None = None

    @torch.no_grad()
    def run(self, images: torch.Tensor) -> list[ConvFit]:
        """Re-fit the convs on `images` (uint8, as `calibration_images` gives them); return one `ConvFit` per conv."""
        self.saliency = _saliency(self.original, images) if self.focus > 0 else None
        before, after = _Frontier(self.original, images), _Frontier(self.pruned, images)
        fits: list[ConvFit] = []
        for i in TQDM(range(len(after.layers)), desc="reconstruct", total=len(after.layers)):
            convs = _dense_convs(after.layers[i], f"model.{i}")
            sizes = {name: self.modules["original"][name].out_channels for name, _ in convs}
            problems = [_Problem(name, conv, _kept_outputs(self.keep, name, sizes[name])) for name, conv in convs]
            self._targets(i, before, problems)  # also moves the original's frontier past layer i
            if problems:
                levels, ranks = _levels(after.layers[i], [p.conv for p in problems], after.inputs(i, 0))
                for level in sorted(set(levels)):
                    chosen = [(p, r) for p, v, r in zip(problems, levels, ranks) if v == level]
                    fits += self._fit_level(i, after, [p for p, _ in chosen], max(chosen, key=lambda c: c[1])[0])
            after.advance(i)
        return fits

    def _targets(self, i: int, before: _Frontier, problems: list[_Problem]) -> None:
        """Run the original's layer `i` once over every batch, keeping each conv's output at its sampled positions."""
        batch = [0]
        sources = {id(p): self.modules["original"][p.name] for p in problems}

        def hook(problem: _Problem):
            def keep(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
                k = batch[0]
                saliency = self.saliency[k] if self.saliency is not None else None
                picks = _picks(out.shape[2:], self.positions, saliency, self.focus, i * 100_003 + k)
                picks = picks.expand(len(out), -1)
                chosen = out.flatten(2)[:, problem.rows]
                y = chosen.gather(2, picks[:, None].expand(-1, len(problem.rows), -1)).transpose(1, 2)
                problem.targets[k] = (picks, y)
                if k == 0:
                    problem.first_input = args[0]

            return keep

        handles = [sources[id(p)].register_forward_hook(hook(p)) for p in problems]
        try:
            before.advance(i, on_batch=lambda k: batch.__setitem__(0, k), needed=bool(problems))
        finally:
            for h in handles:
                h.remove()

    def _fit_level(self, i: int, after: _Frontier, problems: list[_Problem], last: _Problem) -> list[ConvFit]:
        """Accumulate the problems of one level in one pass of the pruned layer over every batch (stopped after `last`,
        the one that runs last), then solve each.

        Every `HELD_OUT`-th image checks a fit instead of making it: the fit is kept only if it lowers the error on
        those images, and that error is reported, so a conv with more unknowns than calibration rows is not
        over-fitted unseen."""
        batch = [0]

        def hook(problem: _Problem):
            def gather(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
                k, x = batch[0], args[0]
                if k == 0:
                    first = problem.first_input
                    problem.unchanged = first is not None and x.shape == first.shape and torch.equal(x, first)
                if not problem.unchanged and k in problem.targets:
                    picks, y = problem.targets.pop(k)
                    cols = _columns(problem.conv, x, picks, out.shape[3])
                    checking = (torch.arange(len(x)) + k * BATCH) % HELD_OUT == HELD_OUT - 1
                    for gram, part in ((problem.fit, ~checking), (problem.held, checking)):
                        if part.any():
                            gram.add(cols[part].flatten(0, 1), y[part].flatten(0, 1))
                if problem is last:
                    raise _Stop

            return gather

        handles = [p.conv.register_forward_hook(hook(p)) for p in problems]
        try:
            for k in range(after.n_batches):
                batch[0] = k
                try:
                    after.layers[i](after.inputs(i, k))
                except _Stop:
                    pass
        finally:
            for h in handles:
                h.remove()
        return [fit for p in problems if not p.unchanged and (fit := self._solve(p))]

    def _solve(self, p: _Problem) -> ConvFit | None:
        """Solve one problem; write the fit if it lowers the error on the checking images."""
        if p.fit.xx is None:
            return None
        check = p.held if p.held.xx is not None else p.fit
        start = self._current(p.name, p.conv, p.rows)  # the ridge pulls the fit towards it, not towards 0
        error, fitted = check.error(start), check.error(p.fit.solve(RIDGE, start))
        if fitted < error:  # else the cut is closer on the images that check it: kept as it is
            self._set(p.name, p.conv, p.rows, (p.fit + p.held).solve(RIDGE, start))
        inputs = (self.modules["original"][p.name].in_channels, p.conv.in_channels)
        return ConvFit(p.name, inputs, error, min(error, fitted))

    def _bn(self, model: str, name: str) -> nn.BatchNorm2d | None:
        """The BN after the conv `name` in the "original" or "pruned" model, if it has one."""
        bn = _bn_name(name)
        return self.modules[model].get(bn) if bn else None

    def _current(self, name: str, conv: nn.Conv2d, rows: list[int]) -> torch.Tensor:
        """The pruned conv as a solution `[W; b]`, its intercept in the original's pre-BN frame (the fold's shift)."""
        w = conv.weight.detach().flatten(1).T.double()
        bn = self._bn("pruned", name)
        if bn is not None:
            b = self._bn("original", name).running_mean[rows] - bn.running_mean
        else:
            b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        return torch.cat([w, b.detach().double()[None]])

    def _set(self, name: str, conv: nn.Conv2d, rows: list[int], solution: torch.Tensor) -> None:
        """Write the solution: weights into the conv, the intercept into the BN's running mean or the conv's bias."""
        w, b = solution[:-1].T.float(), solution[-1].float()
        conv.weight.data = w.reshape(conv.weight.shape).contiguous()
        bn = self._bn("pruned", name)
        if bn is not None:
            bn.running_mean.copy_(self._bn("original", name).running_mean[rows] - b)
        elif conv.bias is not None:
            conv.bias.data.copy_(b)
        else:
            conv.bias = nn.Parameter(b)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor) -> None:
    """Re-estimate every BN's running mean and variance through `model` on `images` (a cumulative average over the
    batches, the other layers in inference mode)."""
    model.float().eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for batch in TQDM(images.split(BATCH), desc="BN statistics"):
            model(batch.float() / 255)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()


@dataclass(frozen=True)
class Repair:
    """How a one-shot prune is repaired from calibration images: least-squares reconstruction of the convs, BN
    statistics re-estimated after it, and how many training images calibrate both. Reconstruction is on by default:
    the cut alone keeps its ranking of boxes (validation's mAP) but shifts every class score down, below the
    threshold `predict` keeps, and the reconstruction brings the scores back; BN re-estimation is off (docs/DESIGN.md,
    "Train-free pruning", gives both tables)."""

    reconstruct: bool = DEFAULT_RECONSTRUCT
    bn: bool = DEFAULT_RECALIBRATE_BN
    images: int = DEFAULT_CALIB_IMAGES

    def __post_init__(self) -> None:
        """A calibration count asked for with every repair step off would be ignored: refused instead."""
        if not self.active and self.images != DEFAULT_CALIB_IMAGES:
            raise ValueError(
                f"--calib-images {self.images} sets how many images the repair reads, and --no-reconstruct without "
                "--recalibrate-bn turns the repair off: drop --calib-images, or turn a repair step on"
            )

    @property
    def active(self) -> bool:
        """Whether any repair step runs."""
        return self.reconstruct or self.bn


def repair(
    original: nn.Module, pruned: nn.Module, keep: dict[str, list[int]], data: str, imgsz: int, how: Repair
) -> list[ConvFit]:
    """Repair `pruned` (in place) as `how` says, from the first `how.images` training images of `data`.

    Returns:
        The fits made (empty without reconstruction).

    Raises:
        MemoryError: the calibration images' activations do not fit in memory, with the settings that lower them.
    """
    images = calibration_images(original, data, imgsz, how.images)
    if len(images) < how.images:
        LOGGER.warning(
            f"{colorstr('yoloslim:')} --calib-images {how.images} asks for more than the {len(images)} training "
            f"images of {data}: calibrating on all {len(images)}"
        )
    LOGGER.info(f"{colorstr('yoloslim:')} repairing the pruned model from {len(images)} training images of {data}")
    try:
        fits = Reconstruction(original, pruned, keep).run(images) if how.reconstruct else []
        if how.bn:
            recalibrate_bn(pruned, images)
    except (MemoryError, RuntimeError) as e:  # torch's CPU allocator raises a RuntimeError
        if isinstance(e, RuntimeError) and "allocate" not in str(e):
            raise
        raise MemoryError(
            f"the repair ran out of memory on {len(images)} calibration images at imgsz {imgsz}: lower --calib-images "
            f"(e.g. {max(len(images) // 2, 1)}) or --imgsz, or prune with --no-reconstruct"
        ) from None
    return fits
