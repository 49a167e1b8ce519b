"""Taylor importance from real gradients, and a zeroing that fades channels out instead of cutting them at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG_DICT

from yoloslim import REGISTRY, YOLO, Pruner, steps
from yoloslim.checkpoint import load_model, save_checkpoint
from yoloslim.channels import build_graph
from yoloslim.cost import prunable_units
from yoloslim.target import FADE, ChannelZeroing
from yoloslim.taylor import TaylorImportance, estimate_taylor, first_order_change
from yoloslim.settings import IMPORTANCE_NAMES, Ranking, SparsityTarget

from .conftest import GAMMA, TINY, build_model


def _batch(n: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    """Random images with two boxes each, as Ultralytics' loss reads a batch."""
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]], dtype=torch.get_default_dtype())
    return {
        "img": torch.rand(n, 3, size, size, generator=g),
        "batch_idx": torch.arange(n).repeat_interleave(2).to(boxes),
        "cls": torch.tensor([0.0, 1.0] * n).view(-1, 1).to(boxes),
        "bboxes": boxes.repeat(n, 1),
    }


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model.loss(batch)[0].sum()


@pytest.mark.parametrize("streams", [False, True])
def test_taylor_matches_a_finite_difference_of_the_loss(streams) -> None:
    """`first_order_change` is dL/dt of the loss when a channel's gamma and beta (of every BN that carries it) are
    scaled by (1 - t), at t = 0, with the sign flipped: checked against a central difference in float64 (the
    loss's own buffers too, hence the default dtype). Ultralytics' loss assigns targets to anchors from the
    predictions without gradients (task-aligned assignment); the difference holds that assignment fixed, as the
    gradients do."""
    torch.set_default_dtype(torch.float64)
    try:
        _check_against_finite_difference(streams)
    finally:
        torch.set_default_dtype(torch.float32)


def _check_against_finite_difference(streams: bool) -> None:
    model = build_model().double()
    model.args = get_cfg(overrides={**DEFAULT_CFG_DICT, "imgsz": 64})
    batch = _batch()
    modules = dict(model.named_modules())
    units = prunable_units(build_graph(model, streams))
    _loss(model, batch)  # builds the criterion
    assign = model.criterion.assigner.forward
    frozen: list = []  # the assignment of this batch, kept: it is computed without gradients, so it is held fixed
    model.criterion.assigner.forward = lambda *a, **k: (
        frozen[0] if frozen else frozen.append(assign(*a, **k)) or frozen[0]
    )
    _loss(model, batch).backward()
    eps, checked = 1e-4, 0
    torch.manual_seed(0)
    picks = [units[i] for i in torch.randperm(len(units))[:8].tolist()]
    if streams:
        picks.append(next(u for u in units if len(u.members) > 2))  # a stream: C2f cv1 half and Bottleneck cv2s
    for unit in picks:
        change = first_order_change(modules, unit)
        j = int(change.abs().argmax())  # the channel whose change is clearest above rounding
        losses = []
        for t in (eps, -eps):
            saved = []
            with torch.no_grad():
                for name, offset in unit.members:
                    bn = modules[name]
                    saved.append((bn.weight[offset + j].clone(), bn.bias[offset + j].clone()))
                    bn.weight[offset + j] *= 1 - t
                    bn.bias[offset + j] *= 1 - t
                losses.append(float(_loss(model, batch)))
                for (name, offset), (w, b) in zip(unit.members, saved, strict=True):
                    modules[name].weight[offset + j] = w
                    modules[name].bias[offset + j] = b
        numeric = -(losses[0] - losses[1]) / (2 * eps)
        assert float(change[j]) == pytest.approx(numeric, rel=1e-3, abs=1e-6)
        checked += 1
    assert checked == len(picks)


def test_importance_is_the_moving_average_of_squared_changes() -> None:
    """Two steps with known gradients: the score is decay * first^2 + (1 - decay) * second^2, per channel."""
    model = build_model()
    units = prunable_units(build_graph(model))
    modules = dict(model.named_modules())
    unit = units[0]
    bn = modules[unit.members[0][0]]
    importance = TaylorImportance(decay=0.75)
    changes = []
    for scale in (1.0, 3.0):
        for p in model.parameters():
            p.grad = torch.full_like(p, scale)
        changes.append((bn.weight + bn.bias).detach()[: unit.size] * scale)
        importance.accumulate(modules, units, grad_scale=2.0)  # an AMP scale of 2 halves every gradient
    expected = 0.75 * (changes[0] / 2) ** 2 + 0.25 * (changes[1] / 2) ** 2
    assert torch.allclose(importance(Pruner(model, GAMMA), unit), expected)
    bn.weight.grad[0] = float("inf")  # an AMP overflow: the step is skipped, the averages stay
    assert not importance.accumulate(modules, units)
    assert torch.allclose(importance(Pruner(model, GAMMA), unit), expected)
    with pytest.raises(ValueError, match="no gradients yet"):
        TaylorImportance()(Pruner(model, GAMMA), unit)


def test_estimate_taylor_ranks_a_prune(tiny_ckpt, tiny_data) -> None:
    """Scores from a few training batches for every unit, the model untouched, and a plan that uses them."""
    model, _ = load_model(tiny_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    importance = estimate_taylor(model, tiny_data, 64, batches=2, batch=4)
    pruner = Pruner(model, importance=importance)
    scores = pruner.scores()
    assert len(scores) == len(pruner.units) and all((s >= 0).all() and s.isfinite().all() for s in scores)
    assert sum(float(s.sum()) for s in scores) > 0
    plan = pruner.plan(0.3)
    lowest = torch.cat(scores).sort().values[: int(0.3 * pruner.n_channels)]
    assert plan.removed > 0.25 and plan.threshold >= float(lowest.max())  # the cut follows these scores
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="ranks channels by gradients"):
        Pruner(model, Ranking(importance="taylor")).plan(0.3)


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("fade", [FADE, 0.0])
def test_zeroing_fades_so_no_step_moves_the_outputs_much(monkeypatch, fade) -> None:
    """A zeroing of half the channels stepped through a run of 200 optimizer steps (no training): with the fade no
    step moves the outputs by more than 15% of the whole zeroing's change, and the chosen channels end at exactly 0.

    Why 15%: a chosen channel loses 1/20 of its start gamma and beta a step (FADE = 0.1 of 200 steps), and the
    cubic schedule chooses about a quarter of the channels within its first fade window, so to first order a step
    carries about 1/20 of a quarter-to-half of the change, 2-5%, plus the network's nonlinearity (measured: 9.9%).
    Choosing the same channels with no fade (a cut) moves the outputs by 64% of the whole change in one step."""
    monkeypatch.setattr("yoloslim.target.FADE", fade)
    model = build_model()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    zeroing = ChannelZeroing(model, SparsityTarget("channels", 0.5), GAMMA)
    steps = 200
    start = previous = _outputs(model, x)
    moves = []
    for i in range(1, steps + 1):
        zeroing.update(i / steps, [model])
        now = _outputs(model, x)
        moves.append(float((now - previous).abs().max()))
        previous = now
    bns = dict(model.named_modules())
    chosen = torch.cat([torch.cat([bns[n].weight[i], bns[n].bias[i]]) for n, i in zeroing.zeroed.items()])
    assert zeroing.finished and not chosen.any()
    total = float((previous - start).abs().max())
    assert (max(moves) < 0.15 * total) == (fade > 0)


def test_taylor_prune_without_training_data_says_what_to_pass(tmp_path) -> None:
    """A checkpoint that names no dataset here cannot be ranked by Taylor: a one-line error, nothing written."""
    source = save_checkpoint(build_model(), tmp_path / "untrained.pt", train_args={"data": str(tmp_path / "gone.yaml")})
    with pytest.raises(ValueError, match="pass --data your.yaml"):
        steps.prune(source, ratio=0.3, save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_taylor_prune_on_a_dataset_with_other_classes_says_so(tiny_ckpt, tiny_data, tmp_path) -> None:
    """The tiny model predicts 3 classes; a 1-class dataset used to reach Ultralytics' assigner as an IndexError."""
    spec = yaml.safe_load(Path(tiny_data).read_text())
    other = tmp_path / "one-class.yaml"
    other.write_text(yaml.safe_dump({**spec, "path": str(Path(tiny_data).parent), "names": {0: "circle"}}))
    with pytest.raises(ValueError, match=r"has 1 classes but .* predicts 3: .*--importance gamma"):
        steps.prune(tiny_ckpt, ratio=0.3, save_dir=tmp_path / "out", data=str(other))
    assert not (tmp_path / "out").exists()


class GammaTaylor:
    """Taylor on gamma alone, `(dL/dgamma * gamma)^2` summed over a unit's BNs and averaged over steps: a criterion
    that learns from gradients, registered by a test to show that a new one is a registry entry and its name."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def accumulate(self, modules: dict, units: list, grad_scale: float = 1.0) -> bool:
        if any(modules[bn].weight.grad is None for unit in units for bn, _ in unit.members):
            return False
        for unit in units:
            change = sum(
                (modules[bn].weight.grad[o : o + unit.size] / grad_scale * modules[bn].weight[o : o + unit.size])
                .detach()
                .float()
                for bn, o in unit.members
            )
            key = unit.members[0][0]
            self.sums[key] = self.sums.get(key, 0) + change**2
        self.steps += 1
        return True

    def __call__(self, pruner: Pruner, unit) -> torch.Tensor:
        return self.sums[unit.members[0][0]] / max(self.steps, 1)

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.steps = dict(state["sums"]), state["steps"]


@pytest.mark.slow
def test_a_new_gradient_criterion_is_a_registry_entry_and_its_name(monkeypatch, tiny_data, tmp_path) -> None:
    """`importance.REGISTRY` and `settings.IMPORTANCE_NAMES` are all a criterion that learns from gradients needs:
    the settings check accepts its name, the trainer feeds it each step and the zeroing ranks by it."""
    made: list[GammaTaylor] = []
    monkeypatch.setitem(REGISTRY, "gamma-taylor", lambda source: made.append(GammaTaylor()) or made[-1])
    monkeypatch.setattr("yoloslim.settings.IMPORTANCE_NAMES", (*IMPORTANCE_NAMES, "gamma-taylor"))
    model = YOLO("yolov8n.yaml")
    fast = dict(TINY, batch=4, nbs=4, val=False)  # an optimizer step every batch: the zeroing chooses within 2 epochs
    args = dict(sr=1e-2, sparsity=0.3, importance="gamma-taylor", epochs=2, project=str(tmp_path))
    model.train(data=tiny_data, **args, **fast)
    zeroing = model.trainer.zeroing
    assert zeroing.importance is made[-1] and made[-1].steps > 0  # made by the factory, fed by the trainer
    assert zeroing.zeroed and zeroing.amount > 0  # and ranked the channels it chose
