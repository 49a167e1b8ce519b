"""SlimTrainer: the L1 step, the sr schedule, real arguments through args.yaml / resume / DDP, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import ultralytics
import yaml
from ultralytics.models.yolo.detect import DetectionTrainer

from yoloslim import YOLO, SlimTrainer, UnsupportedModuleError, build_graph, steps
from yoloslim.settings import SLIM_ARGS
from yoloslim.trainer import CONTINUE_LR_SCALE, check_slim_args, stage_lr_scale
from yoloslim.sparsity import IMAGES_PER_SR, gamma_stats, sr_at

from .conftest import TINY, assert_one_line_error, build_model, train_interrupted, yoloslim_cli


def test_sr_schedule_is_linear_decay() -> None:
    assert sr_at(0.01, 0, 100) == 0.01
    assert sr_at(0.01, 50, 100) == pytest.approx(0.01 * 0.55)
    assert sr_at(0.01, 99, 100) == pytest.approx(0.01 * (1 - 0.9 * 0.99))  # the last epoch trained


def _bare_trainer(model: torch.nn.Module, sr: float, scaler: torch.amp.GradScaler, epoch: int, epochs: int):
    """A SlimTrainer holding just what `optimizer_step` reads (no dataset, no run folder)."""
    trainer = SlimTrainer.__new__(SlimTrainer)
    trainer.args = SimpleNamespace(**{**SLIM_ARGS, "sr": sr})  # the slimming arguments at their defaults
    trainer.ranking, trainer.target = check_slim_args(trainer.args)  # as __init__ makes them
    trainer.model, trainer.scaler, trainer.ema = model, scaler, None
    trainer.epoch, trainer.epochs, trainer.device = epoch, epochs, torch.device("cpu")
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer._gammas, trainer.zeroing, trainer.world_size = None, None, 0
    trainer._images = IMAGES_PER_SR  # one step over IMAGES_PER_SR images: the L1 coefficient is exactly sr_t
    return trainer


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor in a (nested) model output: training-mode heads return dicts and lists."""
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out
    return [t for item in items for t in _tensors(item)]


@pytest.mark.parametrize("amp_scale", [None, 1024.0])
def test_one_step_adds_exactly_sr_sign_gamma(monkeypatch, amp_scale) -> None:
    """At gradient clipping, prunable gammas' grads = raw grads + sr_t * sign(gamma); all others untouched."""
    model = build_model().train()
    names = {g.name + ".weight" for g in build_graph(model).prunable}
    scaler = torch.amp.GradScaler("cpu", init_scale=amp_scale or 1.0, enabled=amp_scale is not None)
    trainer = _bare_trainer(model, sr=0.3, scaler=scaler, epoch=2, epochs=10)
    loss = sum(t.float().pow(2).mean() for t in _tensors(model(torch.rand(2, 3, 64, 64))))
    scaler.scale(loss).backward()
    raw = {n: p.grad.detach().clone() / (amp_scale or 1.0) for n, p in model.named_parameters() if p.grad is not None}
    seen = {}

    def spy(parameters, max_norm, **kwargs):  # what Ultralytics clips is what we check
        if not seen:
            seen.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        return torch.tensor(0.0)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    trainer.optimizer_step()
    sr_t = sr_at(0.3, 2, 10)
    params = dict(model.named_parameters())
    assert len(names) == 47 and set(seen) == set(raw)
    for n, grad in seen.items():
        expected = raw[n] + sr_t * torch.sign(params[n].detach()) if n in names else raw[n]
        assert torch.equal(grad, expected), n


def test_sparse_run_pushes_prunable_gammas_down(tiny_data, runs) -> None:
    """Same seed, sr=0 vs a large sr (1.2 per 16 images: 0.3 a step of 4): prunable gammas end far lower,
    shortcut-tied ones are not pushed down."""
    fast = dict(TINY, batch=4, nbs=4, optimizer="SGD", lr0=0.3, warmup_epochs=0, epochs=4, val=False)
    result = {}
    for sr in (0.0, 1.2):
        model = YOLO("yolov8n.yaml")
        model.train(data=tiny_data, sr=sr, project=str(runs), name=f"sr{sr}", **fast)
        graph = build_graph(model.model)
        bns = dict(model.model.named_modules())
        result[sr] = {
            kind: torch.cat(
                [
                    bns[g.name].weight.detach().abs().flatten()
                    for g in graph.groups.values()
                    if g.prunable == (kind == "prunable")
                ]
            )
            .median()
            .item()
            for kind in ("prunable", "tied")
        }
    assert result[1.2]["prunable"] < 0.5 * result[0.0]["prunable"]
    assert result[1.2]["tied"] > 0.95 * result[0.0]["tied"]
    csv = (runs / "sr1.2" / "results.csv").read_text().splitlines()
    header, rows = csv[0].split(","), [r.split(",") for r in csv[1:]]
    median = [float(r[header.index("sparsity/median_gamma")]) for r in rows]
    assert len(rows) == 4 and median[-1] < 0.5 * median[0]  # logged every epoch, shrinking


def test_args_saved_and_survive_resume(tiny_data, runs) -> None:
    train_interrupted(YOLO("yolov8n.yaml"), data=tiny_data, epochs=2, sr=0.02, project=str(runs), name="resume", **TINY)
    run = runs / "resume"
    saved = yaml.safe_load((run / "args.yaml").read_text())
    assert saved["sr"] == 0.02 and saved["finetune"] is False
    resumed = YOLO(run / "weights" / "last.pt")
    resumed.train(resume=True)
    assert isinstance(resumed.trainer, SlimTrainer)
    assert resumed.trainer.start_epoch == 1 and resumed.trainer.args.sr == 0.02
    assert yaml.safe_load((run / "args.yaml").read_text())["sr"] == 0.02


@pytest.mark.slow
def test_args_survive_ddp_launcher(tiny_data, runs) -> None:
    """Build Ultralytics' DDP worker payload and run its rebuild step in a fresh process."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    trainer = SlimTrainer(
        overrides={
            "model": "yolov8n.yaml",
            "data": tiny_data,
            "sr": 0.03,
            "finetune": False,
            "project": str(runs),
            "name": "ddp",
            "exist_ok": True,
        }
    )
    file = generate_ddp_file(trainer)
    try:
        template = Path(file).read_text()
        assert "trainer.train()" in template  # Ultralytics' worker script still ends by training the rebuilt trainer
        script = template.replace(
            "trainer.train()", "print('REBUILT', type(trainer).__name__, trainer.args.sr, trainer.args.finetune)"
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    finally:
        ddp_cleanup(trainer, file)
    assert "REBUILT SlimTrainer 0.03 False" in out.stdout, out.stderr[-2000:]


def test_unknown_argument_keeps_ultralytics_error(tiny_data, runs) -> None:
    with pytest.raises(SyntaxError, match="srr"):
        YOLO("yolov8n.yaml").train(data=tiny_data, srr=0.1, project=str(runs), name="bad", **TINY)


@pytest.mark.parametrize("sr", [-0.1, "abc", float("nan")])
def test_bad_sr_fails_before_training(tiny_data, runs, sr) -> None:
    with pytest.raises(ValueError, match="sr="):
        YOLO("yolov8n.yaml").train(data=tiny_data, sr=sr, project=str(runs), name="badsr", **TINY)
    assert not (runs / "badsr").exists()


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path) -> None:
    cases = {
        ("sparse", "--weights", str(tmp_path / "missing.pt")): "weights file",
        ("train", "--data", str(tmp_path / "missing.yaml")): "dataset yaml",
        ("sparse", "--sr", "-1"): "finite number >= 0",
        ("sparse", "--sr", "x"): "not a number",
        ("finetune", "--lr-scale", "0"): "must be a number > 0",
        ("finetune", "--teacher", str(tmp_path / "normal.pt")): "is not an existing .pt checkpoint",
        ("finetune", "--distill-weight", "1"): "give --teacher too",
        ("finetune", "--distill-weight", "-1"): "must be a number > 0",
    }
    for argv, message in cases.items():
        assert_one_line_error(yoloslim_cli(*argv), message)


def test_lr_scale_scales_the_optimizer_and_its_schedule(tiny_data, runs) -> None:
    """lr_scale multiplies the learning rate Ultralytics sets, before its scheduler reads it (so the decay starts
    from the scaled rate); a bad value fails before a run folder exists."""
    args = dict(TINY, optimizer="SGD", lr0=0.04, warmup_epochs=0, epochs=1, val=False)
    model = YOLO("yolov8n.yaml")
    model.train(data=tiny_data, lr_scale=0.25, project=str(runs), name="lrscale", **args)
    groups = model.trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.01] * len(groups))
    assert model.trainer.scheduler.base_lrs == pytest.approx([0.01] * len(groups))
    with pytest.raises(ValueError, match="lr_scale=-1 must be a number > 0"):
        YOLO("yolov8n.yaml").train(data=tiny_data, lr_scale=-1, project=str(runs), name="badlr", **args)
    assert not (runs / "badlr").exists()


def test_stages_that_continue_a_trained_model_start_at_a_tenth(tiny_ckpt, tiny_data, runs) -> None:
    """Without lr_scale, sparsity training from a .pt runs at CONTINUE_LR_SCALE of Ultralytics' rate and normal
    training at the full rate (as stock Ultralytics); a given lr_scale always wins."""
    assert stage_lr_scale({"model": "a.pt", "sr": 0.01}) == CONTINUE_LR_SCALE == 0.1
    assert stage_lr_scale({"model": "a.pt", "finetune": True}) == stage_lr_scale({"model": "a.pt", "sparsity": 0.5})
    assert stage_lr_scale({"model": "a.pt"}) == 1 == stage_lr_scale({"model": "yolov8n.yaml", "sr": 0.01})
    assert stage_lr_scale({"model": "a.pt", "sr": 0.01, "lr_scale": 0.5}) == 0.5
    args = dict(TINY, optimizer="SGD", lr0=0.04, warmup_epochs=0, epochs=1, val=False)
    for name, slim, scale, bias in (("continue-normal", {}, 1.0, 0.1), ("continue-sparse", {"sr": 0.01}, 0.1, 0.0)):
        model = YOLO(tiny_ckpt)
        model.train(data=tiny_data, project=str(runs), name=name, **args, **slim)
        assert [g["initial_lr"] for g in model.trainer.optimizer.param_groups] == pytest.approx([0.04 * scale] * 3)
        saved = model.trainer.args  # fixed in the arguments (args.yaml, checkpoints), so a resume keeps them
        assert (saved.lr_scale, saved.warmup_bias_lr) == (scale, bias)
        assert f"warmup_bias_lr: {bias}" in (runs / name / "args.yaml").read_text()
    model = YOLO(tiny_ckpt)
    model.train(data=tiny_data, project=str(runs), name="continue-given", sr=0.01, warmup_bias_lr=0.05, **args)
    assert model.trainer.args.warmup_bias_lr == 0.05  # what the caller gives wins


def test_normal_training_from_a_pt_is_stock_ultralytics(tiny_ckpt, tiny_data, runs) -> None:
    """yoloslim's normal stage from a trained .pt ends with the very weights, and at the very learning rates, that
    stock Ultralytics gives with the same arguments and seed (its warm-up, rate, nbs and optimizer): the user's
    baseline through yoloslim is the one they would get without it, so the two compare over seeds by one run each."""
    trainers = []
    for name, model in (("normal-ours", YOLO(tiny_ckpt)), ("normal-stock", ultralytics.YOLO(tiny_ckpt))):
        model.train(data=tiny_data, project=str(runs), name=name, epochs=2, val=False, **TINY)
        trainers.append(model.trainer)
    assert [type(t) for t in trainers] == [SlimTrainer, DetectionTrainer]
    rates = [[(g["initial_lr"], g["lr"], g.get("weight_decay")) for g in t.optimizer.param_groups] for t in trainers]
    assert rates[0] == rates[1] and len(rates[0]) == 3
    start, ours, stock = (
        torch.load(w, weights_only=False)["model"].float().state_dict()  # stripped: the EMA
        for w in (tiny_ckpt, trainers[0].last, trainers[1].last)
    )
    assert ours.keys() == stock.keys() and all(torch.equal(ours[k], stock[k]) for k in ours)
    assert not torch.equal(ours["model.0.bn.running_mean"], start["model.0.bn.running_mean"])  # it saw the images


def test_sr_refused_outside_detection_tasks(tiny_data, runs) -> None:
    with pytest.raises(ValueError, match="apply to tasks .* not task 'classify'"):
        YOLO("yolov8n-cls.yaml").train(data=tiny_data, sr=0.01, project=str(runs), name="cls", **TINY)
    assert not (runs / "cls").exists()


def test_unsupported_model_trains_normally_but_not_sparse(tiny_data, runs) -> None:
    YOLO("yolov8n-ghost.yaml").train(data=tiny_data, epochs=1, project=str(runs), name="ghost", **TINY)
    header = (runs / "ghost" / "results.csv").read_text().splitlines()[0]
    assert "metrics/mAP50(B)" in header and "sparsity" not in header
    with pytest.raises(UnsupportedModuleError, match="GhostConv"):
        YOLO("yolov8n-ghost.yaml").train(data=tiny_data, epochs=1, sr=0.01, project=str(runs), name="ghosts", **TINY)
    assert not (runs / "ghosts" / "results.csv").exists()  # refused before the first epoch


def test_training_never_overwrites_its_input(tiny_ckpt) -> None:
    run = tiny_ckpt.parent.parent
    with pytest.raises(ValueError, match="holds the input weights"):
        steps.train(tiny_ckpt, data=None, epochs=1, imgsz=64, batch=8, device="cpu", project=run.parent, name=run.name)


def test_gamma_stats() -> None:
    gammas = [torch.nn.Parameter(torch.tensor([0.0, 0.005, -0.5, 2.0]))]
    stats = gamma_stats(gammas)
    assert stats["sparsity/share_lt_0.01"] == 0.5 and stats["sparsity/median_gamma"] == pytest.approx(0.005)


def test_sparsity_training_on_other_classes_is_refused(tiny_ckpt, tiny_data, tmp_path, runs) -> None:
    """The tiny model predicts 3 classes: sparse-training it on a 1-class set would rebuild the head and train it,
    new, at the continuing tenth of the rate; refused as fine-tuning refuses it."""
    spec = yaml.safe_load(Path(tiny_data).read_text())
    one_class = tmp_path / "one.yaml"
    one_class.write_text(yaml.safe_dump({**spec, "path": str(Path(tiny_data).parent), "names": {0: "shape"}}))
    for slim in ({"sr": 0.01}, {"sparsity": 0.5}):
        with pytest.raises(ValueError, match="predicts 3 classes but dataset .* has 1: sparsity training continues"):
            YOLO(tiny_ckpt).train(data=str(one_class), epochs=1, project=str(runs), name="nc", **slim, **TINY)
