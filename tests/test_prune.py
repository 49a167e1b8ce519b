"""Pruning: exact channel removal, folding, thresholds and floors, and the pruned checkpoint on disk."""

from __future__ import annotations

import hashlib
import math
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from yoloslim import UnsupportedModuleError, build_graph, steps
from yoloslim.checkpoint import load_model, pruned_info, save_checkpoint
from yoloslim.cost import prunable_units
from yoloslim.prune import Pruner, PrunePlan, prune_model
from yoloslim.settings import Ranking

from .conftest import GAMMA, STREAMS, build_model, stock_predict


def _chosen(model, share: float = 0.4, seed: int = 0, only=None, streams: bool = True) -> dict[str, list[int]]:
    """Random kept channels: about `share` removed from every prunable unit (a residual stream keeps the same
    channels in all its BNs, C2f.cv1 halves keep equal counts); `only` limits it to units of those BNs."""
    g = torch.Generator().manual_seed(seed)
    graph = build_graph(model, streams)
    keep = {grp.name: list(range(grp.size)) for grp in graph.groups.values()}
    units = prunable_units(graph)
    chosen: dict[int, list[int]] = {}
    for u, unit in enumerate(units):
        if only is not None and not any(bn in only for bn, _ in unit.members):
            continue
        k = max(1, round(unit.size * (1 - share)))
        chosen[u] = torch.randperm(unit.size, generator=g)[:k].tolist()
    for u, unit in enumerate(units):
        if u not in chosen and unit.twin in chosen:  # the other half of a chosen C2f.cv1 keeps as many
            chosen[u] = list(range(len(chosen[unit.twin])))
    for u, kept in chosen.items():
        for bn, offset in units[u].members:
            keep[bn] = [i for i in keep[bn] if not offset <= i < offset + units[u].size] + [offset + j for j in kept]
    return {name: sorted(k) for name, k in keep.items()}


def _zero_removed(model, keep: dict[str, list[int]], beta: bool) -> None:
    modules = dict(model.named_modules())
    for name, kept in keep.items():
        bn = modules[name]
        removed = torch.ones(bn.num_features, dtype=torch.bool)
        removed[kept] = False
        bn.weight.data[removed] = 0
        if beta:
            bn.bias.data[removed] = 0


def _outputs(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


def _pruned(model, keep, fold: bool = True):
    pruned = deepcopy(model)
    Pruner(pruned, STREAMS, fold=fold).apply(PrunePlan(keep, 0.0, 0.4))  # `_chosen` cuts streams too
    return pruned


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolov8s.yaml"])
def test_removing_zeroed_channels_is_exact(cfg: str) -> None:
    model = build_model(cfg)
    keep = _chosen(model)
    _zero_removed(model, keep, beta=True)
    pruned = _pruned(model, keep)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_outputs(model, x), _outputs(pruned, x), atol=1e-4, rtol=0)
    modules = dict(pruned.named_modules())
    removed = 0
    for name, kept in keep.items():  # every kind of place really shrank
        assert modules[name].num_features == len(kept)
        removed += build_graph(model).groups[name].size - len(kept)
    assert removed > 0.3 * sum(g.size for g in build_graph(model).prunable)
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())


def test_folding_is_exact_for_1x1_consumers() -> None:
    """gamma = 0, beta != 0: channels read only by 1x1 convs are removed exactly with folding on."""
    model = build_model()
    graph = build_graph(model)
    one_by_one = {
        g.name
        for g in graph.prunable
        if not g.residual and all(c.kernel == (1, 1) for c in graph.consumers_of(g.name))  # a stream: 3x3 readers too
    }
    assert {"model.9.cv1.bn", "model.9.cv2.bn", "model.22.cv2.0.1.bn"} <= one_by_one
    keep = _chosen(model, only=one_by_one)
    _zero_removed(model, keep, beta=False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    reference = _outputs(model, x)
    assert torch.allclose(reference, _outputs(_pruned(model, keep, fold=True), x), atol=1e-4, rtol=0)
    assert not torch.allclose(reference, _outputs(_pruned(model, keep, fold=False), x), atol=1e-2, rtol=0)


def test_folding_is_closer_in_general() -> None:
    model = build_model()
    keep = _chosen(model)
    _zero_removed(model, keep, beta=False)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    reference = _outputs(model, x)
    folded = (_outputs(_pruned(model, keep, fold=True), x) - reference).abs().mean()
    plain = (_outputs(_pruned(model, keep, fold=False), x) - reference).abs().mean()
    assert folded < 0.7 * plain


def test_ratio_threshold_floor_and_rounding() -> None:
    model = build_model()
    graph = build_graph(model, streams=False)
    pruned, plan, changes = prune_model(model, 0.5, ranking=GAMMA)  # the seed's ranking
    scores = torch.cat([dict(model.named_modules())[g.name].weight.detach().abs() for g in graph.prunable])
    assert plan.threshold == pytest.approx(float(scores.sort().values[len(scores) // 2]))
    removed = sum(c.before - c.after for c in changes if c.prunable) / sum(c.before for c in changes if c.prunable)
    assert 0.4 < removed <= 0.5
    assert all(c.after == c.before for c in changes if not c.prunable)
    # every ratio works and no layer is emptied; round_to keeps multiples of 8 (or the full width)
    _, _, extreme = prune_model(model, 0.99, ranking=Ranking(importance="gamma", round_to=8))
    assert all(c.after >= 1 and (c.after % 8 == 0 or c.after == c.before) for c in extreme)
    _, _, floored = prune_model(model, 0.99, ranking=Ranking(importance="gamma", min_keep=0.25))
    assert all(c.after >= math.ceil(0.25 * c.before) for c in floored)
    assert any(c.after == math.ceil(0.25 * c.before) for c in floored if c.prunable)  # the floor is what binds
    x = torch.rand(1, 3, 64, 64)
    assert _outputs(pruned, x).shape == _outputs(model, x).shape
    assert model.model[2].cv1.conv.out_channels == 32  # the input model is untouched


def test_c2f_halves_stay_equal() -> None:
    model = build_model()
    pruned, plan, _ = prune_model(model, 0.6, ranking=GAMMA)
    for name, kept in plan.keep.items():
        if build_graph(model).groups[name].halves == 2:
            half = build_graph(model).groups[name].size // 2
            assert sum(i < half for i in kept) == sum(i >= half for i in kept)
    assert all(m.c * 2 == m.cv1.conv.out_channels for m in pruned.modules() if type(m).__name__ == "C2f")


def test_prune_twice(tiny_ckpt, tmp_path) -> None:
    first = steps.prune(tiny_ckpt, ratio=0.3, save_dir=tmp_path / "a")
    second = steps.prune(first, ratio=0.3, save_dir=tmp_path / "b")
    model, _ = load_model(second)
    info = pruned_info(model)
    assert info["source"] == str(first.resolve()) and info["history"][0]["source"] == str(Path(tiny_ckpt).resolve())
    one, _ = load_model(first)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in one.parameters())
    assert _outputs(model, torch.rand(1, 3, 64, 64)).shape[1] == 4 + 3


@pytest.mark.slow
def test_pruned_checkpoint_runs_in_stock_ultralytics(tiny_ckpt, tmp_path) -> None:
    pruned = steps.prune(tiny_ckpt, ratio=0.5, save_dir=tmp_path / "p")
    report = (tmp_path / "p" / "prune_report.txt").read_text()
    assert "model.2.m.0.cv1.bn" in report and "GFLOPs" in report and (tmp_path / "p" / "prune_layers.csv").exists()
    stdout = stock_predict(pruned)
    model, _ = load_model(pruned)
    assert f"PARAMS {sum(p.numel() for p in model.parameters())} RESULTS 1" in stdout


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_input_writes_nothing(tiny_ckpt, tmp_path) -> None:
    before = _digest(tiny_ckpt)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        steps.prune(tiny_ckpt, ratio=1.0, save_dir=out)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        steps.prune(tiny_ckpt, ratio=-0.1, save_dir=out)
    with pytest.raises(FileNotFoundError, match="not found"):
        steps.prune(tmp_path / "missing.pt", ratio=0.5, save_dir=out)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable Ultralytics checkpoint"):
        steps.prune(junk, ratio=0.5, save_dir=out)
    from ultralytics.nn.tasks import DetectionModel

    ghost = save_checkpoint(DetectionModel("yolov8n-ghost.yaml", nc=3, verbose=False), tmp_path / "ghost.pt")
    with pytest.raises(UnsupportedModuleError, match="model.1 is GhostConv"):
        steps.prune(ghost, ratio=0.5, save_dir=out)
    assert not out.exists()
    same = tmp_path / "same"
    same.mkdir()
    target = same / "pruned.pt"
    target.write_bytes(tiny_ckpt.read_bytes())
    with pytest.raises(ValueError, match="overwrite"):
        steps.prune(target, ratio=0.5, save_dir=same)
    assert _digest(target) == _digest(tiny_ckpt) == before and sorted(p.name for p in same.iterdir()) == ["pruned.pt"]
