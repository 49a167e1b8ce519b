"""Bad inputs and silent no-ops found in review: each fails loudly, says what to do, and writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from yoloslim import YOLO, Pruner, UnsupportedModuleError, build_graph, prunable_bn_names, steps
from yoloslim.checkpoint import load_model, save_checkpoint

from .conftest import TINY, build_model, train_interrupted


@pytest.fixture(scope="module")
def pruned(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, 0.4, tmp_path_factory.mktemp("pruned"))


@pytest.mark.parametrize("args", [{"sr": 0.01}, {"sparsity": 0.5}, {"finetune": True}])
def test_stock_trainer_refuses_slimming_arguments(tiny_data, runs, args) -> None:
    """After `import yoloslim`, stock ultralytics.YOLO would accept sr / sparsity / finetune and ignore them."""
    from ultralytics import YOLO as StockYOLO

    name = f"stock-{next(iter(args))}"
    with pytest.raises(ValueError, match="would be ignored by Ultralytics' own DetectionTrainer.*yoloslim"):
        StockYOLO("yolov8n.yaml").train(data=tiny_data, epochs=1, project=str(runs), name=name, **args, **TINY)
    assert not (runs / name / "weights" / "last.pt").exists()


def test_fused_model_is_a_clear_error() -> None:
    model = build_model().fuse()
    for call in (build_graph, prunable_bn_names, Pruner):
        with pytest.raises(UnsupportedModuleError, match="fused"):
            call(model)


def test_plan_that_empties_a_group_is_refused() -> None:
    model = build_model()
    pruner = Pruner(model)
    plan = pruner.plan(0.3)
    name = next(g.name for g in pruner.graph.prunable if g.halves == 1)
    bad = type(plan)({**plan.keep, name: []}, plan.threshold, plan.ratio)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="keeps none of its"):
        pruner.apply(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # untouched


def test_old_checkpoint_ch_key_is_read(tmp_path) -> None:
    """Checkpoints older than Ultralytics 8.3 say `ch`, not `channels`: a 1-channel model is traced as one."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", ch=1, nc=2, verbose=False)
    model.yaml = {k: v for k, v in model.yaml.items() if k != "channels"} | {"ch": 1}
    path = save_checkpoint(model, tmp_path / "old.pt")
    loaded, _ = load_model(path)
    graph = build_graph(loaded)
    assert len(graph.consumers["model.0.conv"].inputs) == 1
    out = steps.prune(path, 0.3, tmp_path / "pruned")
    small, _ = load_model(out)
    assert small.model[0].conv.in_channels == 1 and small(torch.rand(1, 1, 64, 64))[0].shape[1] == 4 + 2


def test_finetune_recorded_as_it_happens(pruned, tiny_data, runs) -> None:
    """A pruned model trained without finetune=True is fine-tuned as it is, and args.yaml says so."""
    YOLO(pruned).train(data=tiny_data, epochs=1, project=str(runs), name="recorded", **TINY)
    assert yaml.safe_load((runs / "recorded" / "args.yaml").read_text())["finetune"] is True
    _, ckpt = load_model(runs / "recorded" / "weights" / "last.pt")
    assert ckpt["train_args"]["finetune"] is True


STOCK_RESUME = r"""
import sys
from ultralytics import YOLO
try:
    YOLO(sys.argv[1]).train(resume=True)
except KeyError as e:
    print("REFUSED", e)
"""


def test_stock_resume_of_a_pruned_run_fails_loudly(pruned, tiny_data, runs) -> None:
    """Stock Ultralytics would rebuild the full-width network and keep only the weights that fit: it stops instead,
    while stock predict still works on the same checkpoint and yoloslim resumes it."""
    train_interrupted(YOLO(pruned), data=tiny_data, epochs=2, project=str(runs), name="stock-resume", **TINY)
    last = runs / "stock-resume" / "weights" / "last.pt"
    out = subprocess.run([sys.executable, "-c", STOCK_RESUME, str(last)], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in out.stdout and "train it with yoloslim.YOLO" in out.stdout, out.stderr[-2000:]
    resumed = YOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1


def test_penalty_that_reaches_no_gamma_fails_loudly(tiny_data, runs) -> None:
    """If the prunable gammas found at setup are no longer the trained parameters, sparsity training stops."""
    model = YOLO("yolov8n.yaml")

    def replace_parameters(trainer) -> None:
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight = torch.nn.Parameter(m.weight.detach().clone())

    model.add_callback("on_train_start", replace_parameters)
    with pytest.raises(RuntimeError, match="reached none of the prunable gammas"):
        model.train(data=tiny_data, epochs=1, sr=0.01, project=str(runs), name="stale", **TINY)
