"""Sparsity training toward a target: the schedule, reaching it with AdamW and SGD, EMA, resume, pruning only zeros."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from yoloslim import YOLO, Pruner, UnsupportedModuleError, steps
from yoloslim.checkpoint import load_model
from yoloslim.sparsity import IMAGES_PER_SR, gamma_stats, prunable_gammas, sr_at
from yoloslim.target import FADE, RAMP_END, ChannelZeroing, scheduled_share
from yoloslim.trainer import read_zeroing_state
from yoloslim.settings import Ranking, SparsityTarget

from .conftest import GAMMA, TINY, assert_one_line_error, build_model, train_interrupted, yoloslim_cli

FAST = dict(TINY, batch=4, nbs=4, val=False)


def _share(weights: Path) -> float:
    """Share of prunable gammas < 0.01 in a saved checkpoint (the EMA weights Ultralytics saves)."""
    return gamma_stats(prunable_gammas(load_model(weights)[0]))["sparsity/share_lt_0.01"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv", newline="") as f:
        return [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]


def test_cubic_schedule() -> None:
    assert scheduled_share(0.6, 0.0) == 0 == scheduled_share(0.6, 0.25)  # the L1 term acts alone first
    assert scheduled_share(0.6, (0.25 + RAMP_END) / 2) == pytest.approx(0.6 * (1 - 0.5**3))
    assert scheduled_share(0.6, RAMP_END) == pytest.approx(0.6) == scheduled_share(0.6, 1.0)
    assert RAMP_END + FADE <= 0.8  # the last fifth of the run trains the survivors with every zero held
    shares = [scheduled_share(0.5, t / 100) for t in range(101)]
    assert shares == sorted(shares)  # never falls


@pytest.mark.parametrize("share", [0.3, 0.6, 0.9])
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8s.yaml"])
def test_plan_share_removes_at_least_the_share(cfg, share) -> None:
    pruner = Pruner(build_model(cfg), GAMMA)
    removed = round(pruner.plan_share(share).removed * pruner.n_channels)
    assert share * pruner.n_channels <= removed < share * pruner.n_channels + 16  # at least it, by little more
    with pytest.raises(ValueError, match="allow at most"):
        Pruner(build_model(cfg), Ranking(importance="gamma", min_keep=0.5)).plan_share(0.6)


def test_zeroing_holds_zeros_in_every_copy() -> None:
    model, ema = build_model(), build_model()
    zeroing = ChannelZeroing(model, SparsityTarget("channels", 0.5), GAMMA)
    zeroing.update(RAMP_END, [model, ema])  # all chosen, fading
    assert not zeroing.finished
    zeroing.update(RAMP_END + FADE, [model, ema])  # faded to exactly 0
    for m in (model, ema):
        gammas = torch.cat([g.detach().flatten() for g in prunable_gammas(m)])
        assert (gammas == 0).float().mean() >= 0.5
    bns = dict(model.named_modules())
    for name, idx in zeroing.zeroed.items():
        assert not bns[name].bias[idx].any()  # beta too: a zeroed channel outputs exactly SiLU(0) = 0
    with pytest.raises(ValueError, match="cannot be reached"):
        ChannelZeroing(model, SparsityTarget("channels", 0.99), GAMMA)


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD"])
def test_target_reached_and_saved(tiny_data, runs, optimizer) -> None:
    """Three epochs reach the target in the saved (EMA) weights; pruning at it removes only zeros, exactly."""
    name = f"target-{optimizer}"
    model = YOLO("yolov8n.yaml")
    model.train(
        data=tiny_data,
        epochs=3,
        sr=1e-2,
        sparsity=0.5,
        optimizer=optimizer,
        project=str(runs),
        name=name,
        **{**FAST, "val": True},
    )
    run = runs / name
    assert _share(run / "weights" / "last.pt") >= 0.5
    assert _share(run / "weights" / "best.pt") >= 0.5  # no epoch before the target can become best.pt
    rows = _rows(run)
    targets = [float(r["sparsity/target_now"]) for r in rows]
    assert len(rows) == 3 and targets == sorted(targets) and targets[-1] == 0.5
    assert float(rows[-1]["sparsity/share_lt_0.01"]) >= 0.5
    sparse, _ = load_model(run / "weights" / "last.pt")
    pruned = steps.prune(run / "weights" / "last.pt", ratio=0.5, save_dir=runs / f"{name}-pruned")
    small, _ = load_model(pruned)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(small.float().eval()(x)[0], sparse.float().eval()(x)[0], atol=1e-4)
    report = (runs / f"{name}-pruned" / "prune_report.txt").read_text()
    assert "largest |gamma| removed 0" in report


@pytest.mark.parametrize(
    ("nbs", "warmup_epochs", "images_per_step"),
    [(4, 0, [4] * 8), (16, 0, [16, 16]), (16, 1, [4, 8, 16])],  # warm-up ramps accumulate from 1 to 4
)
def test_penalty_is_per_image_whatever_nbs(monkeypatch, tiny_data, runs, nbs, warmup_epochs, images_per_step) -> None:
    """Each optimizer step adds sr_t * images / 16 * sign(gamma): the L1 term follows the images whose loss the
    step applies, so the penalty per image is the same at any nbs / accumulate, warm-up included."""
    import yoloslim.trainer as trainer_module

    added = []

    def spy(gammas, coefficient):
        added.append(coefficient)
        return len(gammas)

    monkeypatch.setattr(trainer_module, "add_l1_subgradient", spy)
    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_epoch_start", lambda t: added.append(("epoch", t.epoch)))
    model.train(
        data=tiny_data,
        epochs=2,
        sr=0.5,
        warmup_epochs=warmup_epochs,
        project=str(runs),
        name=f"nbs{nbs}-{warmup_epochs}",
        **{**FAST, "nbs": nbs},
    )
    epoch, images = 0, []
    for item in added:
        if isinstance(item, tuple):
            epoch = item[1]
        else:
            images.append(item / sr_at(0.5, epoch, 2) * IMAGES_PER_SR)
    assert images == pytest.approx(images_per_step)


def test_interrupted_run_resumes_its_schedule(tiny_data, runs) -> None:
    args = dict(data=tiny_data, epochs=3, sr=1e-2, sparsity=0.5, project=str(runs), name="target-resume", **FAST)
    train_interrupted(YOLO("yolov8n.yaml"), **args)
    run = runs / "target-resume"
    first = _share(run / "weights" / "last.pt")
    assert first < 0.5  # part of the way after one epoch of three (its chosen channels still fading)
    saved = torch.load(run / "weights" / "zeroing.pt", weights_only=True)  # the state is data
    assert saved["epoch"] == 0 and saved["state"]["zeroed"] and saved["state"]["importance"]["scores"]
    resumed = YOLO(run / "weights" / "last.pt")
    at_start = {}

    def record(trainer) -> None:  # the state the resumed run starts from: the one saved, to the last fade
        at_start.update(trainer.zeroing.state_dict())

    resumed.add_callback("on_train_start", record)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1 and resumed.trainer.args.sparsity == 0.5
    for key in ("amount", "progress"):
        assert at_start[key] == saved["state"][key]
    for key in ("zeroed", "until"):
        assert at_start[key].keys() == saved["state"][key].keys()
        assert all(torch.equal(at_start[key][n], saved["state"][key][n]) for n in at_start[key])
    scores = saved["state"]["importance"]["scores"]
    assert all(torch.equal(at_start["importance"]["scores"][k], v) for k, v in scores.items())
    targets = [float(r["sparsity/target_now"]) for r in _rows(run)]
    assert len(targets) == 3 and 0 < targets[0] and targets == sorted(targets) and targets[-1] == 0.5
    assert _share(run / "weights" / "last.pt") >= 0.5


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ({"sparsity": 1.0}, ValueError, r"must be in \[0, 1\)"),
        ({"sparsity": -0.2}, ValueError, r"must be in \[0, 1\)"),
        ({"sparsity": "half"}, ValueError, "not a number"),
        ({"sparsity": 0.5, "finetune": True}, ValueError, "do not go together"),
        ({"sparsity": 0.99}, ValueError, "cannot be reached"),
        ({"sparsity": 0.5, "model": "yolov8n-ghost.yaml"}, UnsupportedModuleError, "GhostConv"),
    ],
)
def test_bad_sparsity_fails_before_training(tiny_data, runs, args, error, message) -> None:
    args = dict(args)
    name = f"bad-{len(list(runs.iterdir()))}"
    with pytest.raises(error, match=message):
        YOLO(args.pop("model", "yolov8n.yaml")).train(
            data=tiny_data, epochs=1, project=str(runs), name=name, **args, **FAST
        )
    assert not (runs / name).exists()


@pytest.mark.slow
def test_cli_sparsity_errors_are_one_line(tmp_path) -> None:
    assert_one_line_error(yoloslim_cli("sparse", "--sparsity", "1.5"), "must be in [0, 1)")


def test_plain_sr_is_the_seed_form_without_zeroing(tiny_data, runs) -> None:
    model = YOLO("yolov8n.yaml")
    model.train(data=tiny_data, epochs=1, sr=1e-2, project=str(runs), name="seed-form", **FAST)
    assert model.trainer.zeroing is None
    assert "sparsity/target_now" not in _rows(runs / "seed-form")[0]
    assert math.isclose(_share(runs / "seed-form" / "weights" / "last.pt"), 0.0)


class _RunsCode:
    """A pickle that would run code when loaded without weights_only (it writes a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("content", ["empty", "truncated", "code", "list"])
def test_a_damaged_or_hostile_zeroing_state_is_ignored_with_a_warning(tmp_path, content) -> None:
    """`zeroing.pt` is read as data: a damaged file or one that is not the state is None (the trainer then chooses
    the channels again), and a pickle that would run code is refused without running it."""
    path, marker = tmp_path / "zeroing.pt", tmp_path / "ran"
    good = {"epoch": 0, "state": {"kind": "channels", "value": 0.5}}
    if content == "code":
        torch.save({"epoch": 0, "state": _RunsCode(str(marker))}, path)
    elif content == "list":
        torch.save([1, 2], path)
    else:
        torch.save(good, path)
        path.write_bytes(b"" if content == "empty" else path.read_bytes()[:40])
    assert read_zeroing_state(path) is None
    assert not marker.exists()
    torch.save(good, path)
    assert read_zeroing_state(path) == good


def test_a_zeroing_state_of_another_model_is_refused() -> None:
    """A saved state that chooses channels the model does not have is an error before anything is set."""
    model = build_model()
    zeroing = ChannelZeroing(model, SparsityTarget("channels", 0.5), GAMMA)
    state = zeroing.state_dict()
    state["zeroed"] = {"model.0.bn": torch.tensor([0, 99])}
    with pytest.raises(ValueError, match="does not have"):
        zeroing.load_state_dict(state)
    state["zeroed"] = {"model.99.bn": torch.tensor([0])}
    with pytest.raises(ValueError, match="does not have"):
        zeroing.load_state_dict(state)
    assert zeroing.zeroed == {}
