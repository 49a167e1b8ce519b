"""Pruning to a compute budget: GFLOPs / params targets, the cost model, residual streams, bad input."""

from __future__ import annotations

import subprocess
import sys
from copy import deepcopy

import pytest
import torch
from ultralytics.utils.torch_utils import get_flops, get_num_params

from yoloslim import YOLO, build_graph, steps
from yoloslim.checkpoint import load_model
from yoloslim.cost import prunable_units
from yoloslim.prune import Pruner, PrunePlan, prune_model
from yoloslim.settings import Ranking

from .conftest import GAMMA, STREAMS, TINY, build_model

TOLERANCE = 0.02  # a target is reached within 2% of its value


@pytest.mark.parametrize("importance", ["flops", "gamma"])
@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8s.yaml"])
def test_gflops_target_reached_within_tolerance(cfg, importance) -> None:
    """Measured with Ultralytics' own get_flops, not the pruner's cost model."""
    model = build_model(cfg)
    full = get_flops(model, 320)
    for target in (0.8, 0.4, 0.25):
        pruned, plan, _ = prune_model(model, target=("gflops", target), importance=importance)
        reached = get_flops(pruned, 320) / full
        assert abs(reached - target) <= TOLERANCE * target, (target, reached)
        assert 0 < plan.removed < 1 and plan.ratio == plan.removed  # the equivalent channel ratio


def test_params_target_and_cost_model_agree_with_ultralytics() -> None:
    model = build_model("yolov8s.yaml")
    pruned, plan, _ = prune_model(model, target=("params", 0.3), ranking=GAMMA)
    assert abs(get_num_params(pruned) / get_num_params(model) - 0.3) <= TOLERANCE * 0.3
    pruner = Pruner(deepcopy(model), GAMMA)
    for share in (0.2, 0.5, 0.8):  # any plan: the conv-only cost model is within 0.5% of the full model of thop's
        plan = pruner.plan(share)
        small = deepcopy(model)
        Pruner(small, GAMMA).apply(plan)
        assert pruner.cost_share(plan, "gflops") == pytest.approx(
            get_flops(small, 320) / get_flops(model, 320), abs=0.005
        )


def test_cost_aware_ranking_prunes_expensive_layers_first() -> None:
    """With equal gammas, |gamma| per GFLOP removes the high-resolution channels that plain |gamma| keeps."""
    model = build_model("yolov8n.yaml")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
    pruner = Pruner(model, Ranking(importance="flops"))
    plan = pruner.plan_budget("gflops", 0.6)
    assert len(plan.keep["model.0.bn"]) < 16 and len(plan.keep["model.9.cv1.bn"]) == 128  # stem cut, P5 SPPF kept
    cheap = pruner.relative_cost
    first = {bn for bn, _ in pruner.units[int(cheap.argmax())].members}
    assert first & {"model.0.bn", "model.1.bn", "model.2.cv1.bn", "model.2.m.0.cv2.bn"}  # the costliest is early


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8s.yaml"])
def test_residual_stream_pruning_is_exact(cfg) -> None:
    """Stream channels (C2f.cv1 second half + every Bottleneck cv2) zeroed in gamma and beta: removing them from
    every BN of the stream and every conv that reads it leaves the outputs unchanged, to 1e-4."""
    model = build_model(cfg)
    pruner = Pruner(deepcopy(model), STREAMS)
    streams = [u for u in pruner.units if len(u.members) > 1]
    assert len(streams) == 4  # the four backbone C2f blocks
    g = torch.Generator().manual_seed(0)
    keep = {grp.name: list(range(grp.size)) for grp in pruner.graph.groups.values()}
    bns = dict(model.named_modules())
    for unit in streams:
        removed = torch.randperm(unit.size, generator=g)[: unit.size // 2]
        twin_bn, twin_offset = pruner.units[unit.twin].members[0]
        keep[twin_bn] = [i for i in keep[twin_bn] if i not in (twin_offset + removed[: len(removed)]).tolist()]
        for bn, offset in unit.members:
            keep[bn] = [i for i in keep[bn] if i - offset not in removed.tolist()]
            for idx in (removed + offset).tolist():
                bns[bn].weight.data[idx] = 0
                bns[bn].bias.data[idx] = 0
        for idx in (removed + twin_offset).tolist():  # the first half keeps as many (stock chunk(2))
            bns[twin_bn].weight.data[idx] = 0
            bns[twin_bn].bias.data[idx] = 0
    small = deepcopy(model)
    Pruner(small, STREAMS).apply(PrunePlan(keep, 0.0, 0.0))
    assert small.model[4].cv1.conv.out_channels == model.model[4].cv1.conv.out_channels // 2
    assert small.model[4].m[0].cv2.conv.out_channels == small.model[4].c  # the stream narrowed everywhere
    x = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        assert torch.allclose(small(x)[0], model(x)[0], atol=1e-4, rtol=0)


def test_stream_must_keep_the_same_channels() -> None:
    model = build_model()
    keep = {g.name: list(range(g.size)) for g in Pruner(model, STREAMS).graph.groups.values()}
    keep["model.2.m.0.cv2.bn"] = list(range(1, 16))  # cv1's second half still keeps all 16
    with pytest.raises(ValueError, match="residual stream must keep the same channels"):
        Pruner(model, STREAMS).apply(PrunePlan(keep, 0.0, 0.0))


def test_streams_off_by_default_leaves_them_whole() -> None:
    pruned, _, changes = prune_model(build_model(), target=("gflops", 0.5), ranking=GAMMA)
    widths = {c.name: (c.before, c.after) for c in changes}
    assert widths["model.2.m.0.cv2.bn"] == (16, 16) and widths["model.2.cv1.bn"] == (32, 32)
    assert len(prunable_units(Pruner(build_model(), GAMMA).graph)) < len(
        Pruner(build_model(), STREAMS).units
    )


@pytest.mark.slow
def test_gflops_target_pruned_checkpoint_in_stock_ultralytics_and_onnx(tiny_ckpt, tmp_path) -> None:
    """A target-pruned checkpoint (streams pruned) loads in stock Ultralytics, and its ONNX matches torch."""
    pruned = steps.prune(
        tiny_ckpt, ratio=None, save_dir=tmp_path / "p", target=("gflops", 0.4), ranking=Ranking(streams=True)
    )
    report = (tmp_path / "p" / "prune_report.txt").read_text()
    assert "target gflops 0.400x, reached 0.39" in report or "target gflops 0.400x, reached 0.40" in report
    model, _ = load_model(pruned)
    original, _ = load_model(tiny_ckpt)
    streams = [(i, k) for i in (2, 4, 6, 8) for k in range(len(model.model[i].m))]
    assert any(
        model.model[i].m[k].cv2.conv.out_channels < original.model[i].m[k].cv2.conv.out_channels for i, k in streams
    )  # a residual stream was narrowed
    script = f"""
import numpy as np, torch
from ultralytics import YOLO
m = YOLO({str(pruned)!r})
m.predict(np.zeros((64, 64, 3), dtype=np.uint8), imgsz=64, verbose=False)
print("stock ok", sum(p.numel() for p in m.model.parameters()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "stock ok" in out.stdout, out.stderr[-2000:]
    exported = steps.export(pruned, imgsz=64)
    assert exported["max_diff"] < 1e-3


@pytest.mark.slow
def test_bad_targets_write_nothing(tiny_ckpt, tmp_path) -> None:
    for target, message in (
        (0.0, "must be in \\(0, 1\\]"),
        (1.5, "must be in \\(0, 1\\]"),
        (0.001, "smallest reachable is 0.0"),
    ):
        with pytest.raises(ValueError, match=message):
            steps.prune(tiny_ckpt, ratio=None, save_dir=tmp_path / "bad", target=("gflops", target))
    with pytest.raises(ValueError, match="not both"):
        steps.prune(tiny_ckpt, ratio=0.5, save_dir=tmp_path / "bad", target=("gflops", 0.5))
    assert not (tmp_path / "bad").exists()
    cli = [sys.executable, "prune.py", "--weights", str(tiny_ckpt), "--save-dir", str(tmp_path / "bad"), "--no-val"]
    for extra, message in (
        (["--prune-ratio", "0.5", "--target-gflops", "0.5"], "not allowed with argument"),
        (["--target-gflops", "0"], "must be in (0, 1]"),
        (["--target-params", "0.0001"], "smallest reachable"),
    ):
        out = subprocess.run(cli + extra, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]
    assert not (tmp_path / "bad").exists()


def test_sparse_training_to_a_gflops_target_then_prune_to_it(tiny_data, runs) -> None:
    """One number drives both stages: target_gflops zeroes channels until the live ones keep that share of the
    GFLOPs; pruning with the same target then removes only zeros, and the outputs do not change."""
    model = YOLO("yolov8n.yaml")
    model.train(
        data=tiny_data,
        epochs=2,
        sr=1e-2,
        target_gflops=0.4,
        project=str(runs),
        name="gflops",
        **dict(TINY, batch=4, nbs=4, val=False),
    )
    last = runs / "gflops" / "weights" / "last.pt"
    sparse, _ = load_model(last)
    assert Pruner(sparse, GAMMA).live_cost_share("gflops") <= 0.4
    pruned = steps.prune(last, ratio=None, save_dir=runs / "gflops-pruned", target=("gflops", 0.4))
    small, _ = load_model(pruned)
    assert "largest |gamma| removed 0" in (runs / "gflops-pruned" / "prune_report.txt").read_text()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(small.float().eval()(x)[0], sparse.float().eval()(x)[0], atol=1e-4)
    assert get_flops(small, 64) / get_flops(sparse, 64) == pytest.approx(0.4, rel=TOLERANCE)
    with pytest.raises(ValueError, match="give one target"):
        YOLO("yolov8n.yaml").train(data=tiny_data, sparsity=0.5, target_gflops=0.4, **TINY)


def test_round_to_shared_by_zeroing_and_pruning(tiny_data, runs) -> None:
    """round_to=8 in sparse training zeroes whole multiples of 8, so pruning with round_to=8 keeps widths that are
    multiples of 8 (or whole layers) and still removes only zeros."""
    YOLO("yolov8n.yaml").train(
        data=tiny_data,
        epochs=2,
        sr=1e-2,
        target_gflops=0.5,
        round_to=8,
        project=str(runs),
        name="round8",
        **dict(TINY, batch=4, nbs=4, val=False),
    )
    last = runs / "round8" / "weights" / "last.pt"
    pruned = steps.prune(
        last, ratio=None, save_dir=runs / "round8-pruned", target=("gflops", 0.5), ranking=Ranking(round_to=8)
    )
    assert "largest |gamma| removed 0" in (runs / "round8-pruned" / "prune_report.txt").read_text()
    sparse, _ = load_model(last)
    small = dict(load_model(pruned)[0].named_modules())
    for g in build_graph(sparse).prunable:
        width = small[g.name].num_features
        assert width % 8 == 0 or width == g.size, (g.name, width)
    with pytest.raises(ValueError, match="round_to=0 must be a whole number"):
        YOLO("yolov8n.yaml").train(data=tiny_data, target_gflops=0.5, round_to=0, **TINY)


@pytest.mark.slow
def test_bad_training_targets_fail_before_a_run_folder(tiny_data, tmp_path) -> None:
    args = dict(TINY, data=tiny_data, epochs=1, sr=1e-2, project=str(tmp_path), name="bad")
    for extra, message in (
        ({"sparsity": 0.5, "target_gflops": 0.4}, "give one target"),
        ({"target_gflops": 0.001}, "cannot be reached: the per-layer floors keep at least"),
        ({"target_gflops": 1.5}, "must be in \\(0, 1\\]"),
        ({"importance": "l2"}, "must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            YOLO("yolov8n.yaml").train(**args, **extra)
    assert not (tmp_path / "bad").exists()
    cli = [sys.executable, "train_sparsity.py", "--data", tiny_data, "--project", str(tmp_path), "--name", "bad"]
    out = subprocess.run(
        cli + ["--sparsity", "0.5", "--target-gflops", "0.4"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0 and "not allowed with argument" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()
