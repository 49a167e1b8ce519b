"""Every model family the channel rules cover: exact removal of zeroed channels, the rules of each block, and
pruned checkpoints that stock Ultralytics loads, predicts with and exports."""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel, OBBModel, PoseModel, SegmentationModel, yaml_model_load

from yoloslim import YOLO, UnsupportedModuleError, build_graph, steps
from yoloslim.checkpoint import load_model, save_checkpoint
from yoloslim.prune import Pruner, PrunePlan
from yoloslim.trainer import SlimOBBTrainer, SlimPoseTrainer, SlimSegmentationTrainer
from yoloslim.settings import Ranking

from .conftest import GAMMA, TINY, build_model, stock_predict
from .test_prune import _chosen, _zero_removed

MODELS = {"seg": SegmentationModel, "pose": PoseModel, "obb": OBBModel}
FAMILIES = [
    *(f"yolov8{s}{t}.yaml" for s in "ns" for t in ("", "-seg", "-pose", "-obb")),
    "yolov8n-p2.yaml",
    "yolov8n-p6.yaml",
    *(f"yolo11{s}{t}.yaml" for s in "ns" for t in ("", "-seg", "-pose")),
    "yolo12n.yaml",
    "yolo12-residual",  # the residual A2C2f form (layer-scale gamma), which Ultralytics builds at l and x only
    *(f"yolo26{s}{t}.yaml" for s in "ns" for t in ("", "-seg")),
    "yolo26n-pose.yaml",
    "yolo26n-obb.yaml",
]


def _yolo12_residual() -> dict:
    """yolo12.yaml at scale "l" (so A2C2f takes its residual form) with the n widths and depths (so it is small)."""
    spec = yaml_model_load("yolo12l.yaml")
    return {**spec, "scales": {"l": spec["scales"]["n"]}}


def _model(cfg: str) -> DetectionModel:
    """A model of `cfg`'s task with random, distinct BN statistics (so channel mistakes show in outputs)."""
    task = next((t for t in MODELS if f"-{t}." in cfg), None)
    spec = _yolo12_residual() if cfg == "yolo12-residual" else cfg
    return build_model(spec, model_class=MODELS.get(task, DetectionModel))


def _tensors(out) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output, in order; the head's `feats` (its inputs, narrower when pruned)
    are left out."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k, v in out.items() if k != "feats" for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def _max_difference(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, train: bool) -> float:
    """Largest output difference: inference outputs, or (train) every raw branch output, one2one copies included."""
    outs = []
    for model in (a, b):
        model.train(train)
        with torch.no_grad():
            out = model(x)
        outs.append(_tensors(out if train else out[0]))
    assert [t.shape for t in outs[0]] == [t.shape for t in outs[1]]
    return max(float((p - q).abs().max()) for p, q in zip(*outs, strict=True))


@pytest.mark.parametrize("cfg", FAMILIES)
def test_removing_zeroed_channels_is_exact(cfg: str) -> None:
    """About 40% of every prunable unit (streams included) zeroed (gamma and beta), then removed: outputs equal to
    1e-8 (float64) in inference and in every training branch (end-to-end one2one heads, Pose26 sigmas, Proto26 semseg)."""
    model = _model(cfg)
    keep = _chosen(model)
    _zero_removed(model, keep, beta=True)
    pruned = deepcopy(model)
    Pruner(pruned, Ranking(importance="gamma", streams=True)).apply(PrunePlan(keep, 0.0, 0.4))
    # float64: decoded boxes and keypoints are in pixels and batch-statistics BN over a 1x1 P6 map magnifies
    # rounding, so float32 differences reach 1e-4 from summation order alone; float64 shows exactness to 1e-8
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model, pruned = model.double(), pruned.double()
    assert _max_difference(model, pruned, x, train=False) < 1e-8
    assert _max_difference(model, pruned, x, train=True) < 1e-8
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * before  # every family really shrinks


def test_yolo11_and_yolo26_block_rules() -> None:
    """Named examples of each rule: C2PSA and attention stay whole but the FFN's hidden width is prunable;
    depthwise head convs follow the neck channels they read; YOLO26's SPPF shortcut ties its input and output;
    Proto keeps its mask count; C3k streams and Proto26's adds."""
    g11 = build_graph(_model("yolo11n-seg.yaml"))
    assert not g11.groups["model.10.cv1.bn"].prunable and g11.groups["model.10.cv2.bn"].prunable
    assert "num_heads" in g11.groups["model.10.m.0.attn.qkv.bn"].reason
    assert g11.groups["model.10.m.0.ffn.0.bn"].prunable and not g11.groups["model.10.m.0.ffn.1.bn"].prunable
    dw = g11.groups["model.23.cv3.0.0.0.bn"]
    assert dw.follows == "model.16.cv2.bn" and dw.prunable and g11.consumers["model.23.cv3.0.0.0.conv"].depthwise
    assert not g11.groups["model.23.proto.cv3.bn"].prunable and g11.groups["model.23.proto.cv2.bn"].prunable
    assert not g11.groups["model.23.proto.cv1.bn"].prunable  # read by the transposed conv
    streams = build_graph(_model("yolo11n.yaml"), streams=True)
    assert streams.groups["model.6.m.0.m.1.cv2.bn"].residual == "model.6.m.0.m.0.cv2.bn"  # inside a C3k
    assert streams.groups["model.6.m.0.m.0.cv2.bn"].residual == "model.6.m.0.cv1.bn"
    g26 = build_graph(_model("yolo26n-seg.yaml"))
    assert not g26.groups["model.9.cv2.bn"].prunable and not g26.groups["model.8.cv2.bn"].prunable  # SPPF add
    assert "SPPF" in g26.groups["model.9.cv2.bn"].reason
    assert g26.groups["model.23.one2one_cv3.0.0.0.bn"].follows == "model.16.cv2.bn"
    assert not g26.groups["model.16.cv2.bn"].prunable  # added onto by Proto26's refined coarser levels
    assert not g26.groups["model.23.one2one_cv3.0.0.0.bn"].prunable  # so its depthwise readers stay whole too
    assert g26.groups["model.23.proto.semseg.0.bn"].prunable
    # semseg runs in training only (no inference GFLOPs): the cost-aware ranking still gives finite scores
    pruner = Pruner(_model("yolo26n-seg.yaml"), Ranking(importance="flops"))
    assert all(torch.isfinite(t).all() for t in pruner.scores())


def test_c2_rule_p6() -> None:
    graph = build_graph(_model("yolov8n-p6.yaml"), streams=True)
    c2 = graph.groups["model.14.cv1.bn"]
    assert c2.halves == 2 and c2.prunable
    assert graph.groups["model.14.m.0.cv1.bn"].prunable  # neck C2: no shortcut


def test_a2c2f_rule_yolo12() -> None:
    """A2C2f: the area-attention stream and the residual form's output stay whole, the MLP's hidden width is
    prunable; the non-attention form (C3k inside) prunes cv1."""
    graph = build_graph(_model("yolo12n.yaml"))
    assert not graph.groups["model.6.cv1.bn"].prunable and graph.groups["model.6.m.0.0.mlp.0.bn"].prunable
    assert not graph.groups["model.6.m.0.0.attn.qkv.bn"].prunable and graph.groups["model.6.cv2.bn"].prunable
    assert graph.groups["model.11.cv1.bn"].prunable and graph.groups["model.11.m.0.cv2.bn"].prunable  # C3k form
    residual = build_graph(_model("yolo12-residual")).groups["model.6.cv2.bn"]
    assert not residual.prunable and "A2C2f residual" in residual.reason


def test_unsupported_module_is_named() -> None:
    with pytest.raises(
        UnsupportedModuleError, match=r"model.1 is GhostConv, which .* has no rule for \(supported: .*A2C2f"
    ):
        build_graph(DetectionModel("yolov8n-ghost.yaml", nc=3, verbose=False))


@pytest.mark.slow
@pytest.mark.parametrize("cfg", ["yolo11n-seg.yaml", "yolo12n.yaml", "yolo26n.yaml"])
def test_pruned_family_checkpoint_in_stock_ultralytics(cfg: str, tmp_path) -> None:
    """A pruned YOLO11 / YOLO12 / YOLO26 checkpoint (YOLOv8: test_prune.py): stock Ultralytics loads and predicts with it, and its ONNX export
    matches torch."""
    model = _model(cfg)
    source = save_checkpoint(model, tmp_path / cfg.replace(".yaml", ".pt"), train_args={"imgsz": 64})
    pruned = steps.prune(
        source, ratio=0.5, save_dir=tmp_path / "p", ranking=GAMMA
    )  # no training data: an untrained model
    stdout = stock_predict(pruned)
    loaded, _ = load_model(pruned)
    n = sum(p.numel() for p in loaded.parameters())
    assert n < 0.8 * sum(p.numel() for p in model.parameters())
    assert f"PARAMS {n} RESULTS 1 TASK {'segment' if '-seg' in cfg else 'detect'}" in stdout
    result = steps.export(pruned, imgsz=64)
    assert result["max_diff"] <= 1e-3


def _pruned_checkpoint(cfg: str, folder) -> Path:
    source = save_checkpoint(_model(cfg), folder / cfg.replace(".yaml", ".pt"))
    return steps.prune(
        source, ratio=0.3, save_dir=folder / "pruned", ranking=GAMMA
    )  # no training data: an untrained model


@pytest.mark.parametrize(
    "cfg, dataset, trainer",
    [
        ("yolov8n-seg.yaml", "corner_data", SlimSegmentationTrainer),
        ("yolo11n-obb.yaml", "corner_data", SlimOBBTrainer),
        ("yolov8n-pose.yaml", "pose_data", SlimPoseTrainer),
    ],
)
def test_task_sparse_prune_finetune(cfg: str, dataset: str, trainer: type, runs, request) -> None:
    """Segment, OBB and pose models through the slimming steps: sparsity training (the task's slimming trainer),
    pruning only the zeroed channels, fine-tuning the pruned model as it is, and exporting it."""
    data, name = request.getfixturevalue(dataset), cfg.removesuffix(".yaml")
    sparse = YOLO(cfg)
    sparse.train(data=data, epochs=1, sr=0.01, sparsity=0.3, project=str(runs), name=f"{name}-sparse", **TINY)
    assert type(sparse.trainer) is trainer
    assert "sparsity/share_lt_0.01" in (runs / f"{name}-sparse" / "results.csv").read_text().splitlines()[0]
    pruned = steps.prune(sparse.trainer.best, ratio=0.3, save_dir=runs / f"{name}-pruned")
    assert "largest |gamma| removed 0" in (runs / f"{name}-pruned" / "prune_report.txt").read_text()
    tuned = YOLO(pruned)
    tuned.train(data=data, epochs=1, finetune=True, project=str(runs), name=f"{name}-ft", **TINY)
    params = sum(p.numel() for p in load_model(pruned)[0].parameters())
    assert sum(p.numel() for p in load_model(tuned.trainer.best)[0].parameters()) == params
    assert steps.export(tuned.trainer.best, imgsz=64)["max_diff"] <= 1e-3


@pytest.mark.parametrize(
    "cfg, dataset, message",
    [
        ("yolov8n-seg.yaml", "tiny_data", "box labels only"),
        ("yolov8n-obb.yaml", "tiny_data", "needs 4 corners per box"),
        ("yolov8n-pose.yaml", "tiny_data", "kpt_shape None but the pose model predicts"),
        ("yolov8n-seg.yaml", "pose_data", "is a pose dataset"),
    ],
)
def test_pruned_model_refuses_another_tasks_data(cfg: str, dataset: str, message: str, tmp_path, request) -> None:
    pruned = _pruned_checkpoint(cfg, tmp_path)
    data = request.getfixturevalue(dataset)
    with pytest.raises(ValueError, match=message):
        YOLO(pruned).train(data=data, epochs=1, finetune=True, project=str(tmp_path), name="ft", **TINY)
    assert not (tmp_path / "ft").exists()
