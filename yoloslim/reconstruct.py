"""Repair a pruned model without training: re-fit the convs after the cut by least squares on calibration images.

Removing channels changes what every later conv reads. Channel-pruning work on classifiers re-fits the layer after
the cut so that its output on a few unlabelled images matches the unpruned network's (He et al. 2017, "Channel
Pruning for Accelerating Very Deep Neural Networks", arXiv:1707.06168; Luo et al. 2017, ThiNet, arXiv:1707.06342).
Here that is done for a whole YOLO, sequentially as GPTQ quantizes a network layer by layer (Frantar et al. 2022,
arXiv:2210.17323): the inputs of each fit come from the already pruned and re-fitted network, its targets from the
original, so errors do not compound down the network (docs/DESIGN.md, "Train-free pruning").

- Every dense conv (`groups == 1`) whose input differs from the original's is re-fitted by ridge least squares over
  the input channels it keeps: `W = (X^T X + lambda I)^-1 X^T Y`, with `X` the im2col of its input at sampled
  positions and `Y` the original conv's output there (before its BN). The Gram matrices are accumulated in float64
  over the images; the activations are never all held. An unregularised intercept goes into the BN's running mean,
  or into a head conv's bias: it replaces the fold of the removed channels' constants for that conv.
- Depthwise and grouped convs are left as they are (they keep the channels they read, channel for channel).
- The network is run one Ultralytics layer at a time over all calibration images: the outputs later layers read are
  held in float16 for both networks (the frontier of the forward pass), so each conv's fit runs only its own layer.
- `recalibrate_bn` re-estimates every BN's running statistics through the pruned network (a separate step).
"""

from __future__ import annotations

from dataclasses import dataclass
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
RIDGES = (1e-3, 1e-2, 1e-1)  # ridge penalties tried, as shares of the mean diagonal of X^T X


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

    def advance(self, i: int, run: Any) -> None:
        """Run layer `i` on every batch with `run(layer, inputs)`, keep its output if a later layer reads it, and
        drop what no later layer reads."""
        if i in self.last_use:
            self.outputs[i] = [run(self.layers[i], self.inputs(i, k)).half() for k in range(self.n_batches)]
        for j in [j for j in self.outputs if j != -1 and self.last_use.get(j, -1) <= i]:
            del self.outputs[j]


class _Gram:
    """`X^T X`, `X^T Y` and the sums of `Y` and `Y^2` of one conv's least-squares problem, with a column of ones in
    `X` for the intercept, accumulated in float64."""

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
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        xx, xy, yy = (x.T @ x).double(), (x.T @ y).double(), y.square().sum(0).double()
        if self.xx is None:
            self.xx, self.xy, self.yy = xx, xy, yy
        else:
            self.xx += xx
            self.xy += xy
            self.yy += yy

    def solve(self, ridge: float) -> torch.Tensor:
        """The ridge solution `[W; b]` (inputs x outputs, the intercept last and not regularised)."""
        d = len(self.xx) - 1
        penalty = torch.zeros(d + 1, dtype=torch.float64)
        penalty[:d] = ridge * self.xx.diagonal()[:d].mean().clamp_min(1e-12)
        system = self.xx + torch.diag(penalty)
        factor, info = torch.linalg.cholesky_ex(system)
        return torch.cholesky_solve(self.xy, factor) if info == 0 else torch.linalg.lstsq(system, self.xy).solution

    def error(self, w: torch.Tensor) -> float:
        """Squared error of the prediction `X w` over the target's variance around its per-channel mean."""
        sse = self.yy.sum() - 2 * (w * self.xy).sum() + (w * (self.xx @ w)).sum()
        n = self.xx[-1, -1]
        variance = (self.yy - self.xy[-1].square() / n).sum()
        return float(sse.clamp_min(0) / variance.clamp_min(1e-12))


def _columns(conv: nn.Conv2d, x: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """The im2col rows of `x` for `conv` at output positions `picks`: (images * positions, in * kh * kw)."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (B, D, L)
    return cols[:, :, picks].permute(0, 2, 1).reshape(-1, cols.shape[1])


def _capture(module: nn.Module, store: dict[str, torch.Tensor], output: bool) -> Any:
    """A forward hook that keeps the module's input (and output) and stops the forward pass."""

    def hook(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        store["x"] = args[0]
        if output:
            store["y"] = out
        raise _Stop

    return module.register_forward_hook(hook)


def _run_to(layer: nn.Module, conv: nn.Module, inputs: Any, output: bool) -> dict[str, torch.Tensor]:
    """The input (and output) of `conv` when `layer` runs on `inputs`; empty if the layer never calls it."""
    store: dict[str, torch.Tensor] = {}
    handle = _capture(conv, store, output)
    try:
        layer(inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return store


def _dense_convs(layer: nn.Module, prefix: str) -> list[tuple[str, nn.Conv2d]]:
    """The dense learned convs of a layer, by their names in the model, in module order (not the fixed decode conv
    of the head's DFL)."""
    fixed = {id(m) for d in layer.modules() if isinstance(d, DFL) for m in d.modules()}
    return [
        (f"{prefix}.{name}", m)
        for name, m in layer.named_modules()
        if type(m) is nn.Conv2d and m.groups == 1 and id(m) not in fixed
    ]


def _kept_outputs(keep: dict[str, list[int]], name: str, size: int) -> list[int]:
    """The original output channels the pruned conv `name` (a `Conv` block's `.conv`) keeps."""
    return keep.get(name.removesuffix(".conv") + ".bn", list(range(size))) if name.endswith(".conv") else list(range(size))


class Reconstruction:
    """Re-fits, layer by layer, every dense conv of `pruned` whose input differs from `original`'s.

    Args:
        original: the unpruned model (left untouched).
        pruned: its pruned copy, modified in place.
        keep: the plan's kept channels (`PrunePlan.keep`), to pair each pruned conv's outputs with the original's.
        positions: output positions sampled per image for each conv's least squares (all where it has fewer).
    """

    def __init__(
        self,
        original: nn.Module,
        pruned: nn.Module,
        keep: dict[str, list[int]],
        positions: int = 64,
    ) -> None:
        self.original, self.pruned, self.keep = original.float().eval(), pruned.float().eval(), keep
        self.positions = positions
        self.modules = {"original": dict(original.named_modules()), "pruned": dict(pruned.named_modules())}

    @torch.no_grad()
    def run(self, images: torch.Tensor) -> list[ConvFit]:
        """Re-fit the convs on `images` (uint8, as `calibration_images` gives them); return one `ConvFit` per conv."""
        before, after = _Frontier(self.original, images), _Frontier(self.pruned, images)
        fits: list[ConvFit] = []
        for i in TQDM(range(len(after.layers)), desc="reconstruct", total=len(after.layers)):
            for name, conv in _dense_convs(after.layers[i], f"model.{i}"):
                fit = self._fit(name, conv, i, before, after)
                if fit is not None:
                    fits.append(fit)
            before.advance(i, lambda layer, x: layer(x))
            after.advance(i, lambda layer, x: layer(x))
        return fits

    def _fit(self, name: str, conv: nn.Conv2d, i: int, before: _Frontier, after: _Frontier) -> ConvFit | None:
        """Re-fit one conv of layer `i` over all batches; None where its input is the original's or it is not run.

        Every `HELD_OUT`-th image checks the fit instead of making it: the ridge penalty is the one of `RIDGES` with
        the lowest error on those images, the fit is kept only if it lowers that error, and that error is reported,
        so a conv with more unknowns than calibration rows is not over-fitted unseen."""
        source = self.modules["original"][name]
        rows = _kept_outputs(self.keep, name, source.out_channels)
        fit, held, generator = _Gram(), _Gram(), torch.Generator().manual_seed(i)
        for k in range(after.n_batches):
            got = _run_to(after.layers[i], conv, after.inputs(i, k), output=False)
            want = _run_to(before.layers[i], source, before.inputs(i, k), output=True)
            if not got:
                return None  # not called at inference (a training-only branch)
            x, x0, y = got["x"], want["x"], want["y"][:, rows]
            if k == 0 and x.shape == x0.shape and torch.equal(x, x0):
                return None  # reads exactly what the original reads: its kept outputs are the original's
            picks = torch.randperm(y.shape[2] * y.shape[3], generator=generator)[: self.positions].sort().values
            cols = _columns(conv, x, picks).unflatten(0, (len(y), -1))
            targets = y.flatten(2)[:, :, picks].permute(0, 2, 1).reshape(len(y), -1, len(rows))
            checking = (torch.arange(len(y)) + k * BATCH) % HELD_OUT == HELD_OUT - 1
            for gram, part in ((fit, ~checking), (held, checking)):
                if part.any():
                    gram.add(cols[part].flatten(0, 1), targets[part].flatten(0, 1))
        check = held if held.xx is not None else fit
        start = self._current(name, conv, rows)
        checked = {ridge: check.error(fit.solve(ridge)) for ridge in RIDGES}
        error, ridge = check.error(start), min(checked, key=checked.get)
        fitted = checked[ridge]
        if fitted < error:  # else the cut is closer than any fit on the images that check it: kept as it is
            self._set(name, conv, rows, (fit + held).solve(ridge))
        return ConvFit(name, (source.in_channels, conv.in_channels), error, min(error, fitted))

    def _bn(self, model: str, name: str) -> nn.BatchNorm2d | None:
        return self.modules[model].get(name.removesuffix(".conv") + ".bn") if name.endswith(".conv") else None

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
    statistics re-estimated after it, and how many training images calibrate both (docs/DESIGN.md, "Train-free
    pruning", says how the defaults were chosen)."""

    reconstruct: bool = DEFAULT_RECONSTRUCT
    bn: bool = DEFAULT_RECALIBRATE_BN
    images: int = DEFAULT_CALIB_IMAGES

    @property
    def active(self) -> bool:
        """Whether any repair step runs."""
        return self.reconstruct or self.bn


def repair(original: nn.Module, pruned: nn.Module, keep: dict[str, list[int]], data: str, imgsz: int, how: Repair) -> list[ConvFit]:
    """Repair `pruned` (in place) as `how` says, from the first `how.images` training images of `data`; the fits made
    (empty without reconstruction)."""
    images = calibration_images(original, data, imgsz, how.images)
    LOGGER.info(f"{colorstr('yoloslim:')} repairing the pruned model from {len(images)} training images of {data}")
    fits = Reconstruction(original, pruned, keep).run(images) if how.reconstruct else []
    if how.bn:
        recalibrate_bn(pruned, images)
    return fits
