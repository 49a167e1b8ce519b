"""The channel graph: which BN gammas are prunable, which are tied to a shortcut, and what it refuses."""

from __future__ import annotations

import pytest
from torch import nn
from ultralytics.nn.modules import C2f, SPPF, Detect
from ultralytics.nn.tasks import DetectionModel

from yoloslim import UnsupportedModuleError, build_graph, prunable_bn_names

from .conftest import GAMMA


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml"])
def model(request) -> DetectionModel:
    return DetectionModel(request.param, nc=3, verbose=False)


def test_named_examples_yolov8n() -> None:
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    names = prunable_bn_names(model, streams=False)
    graph = build_graph(model, streams=False)
    assert "model.2.m.0.cv1.bn" in names and "model.12.cv1.bn" in names
    for tied in ("model.2.cv1.bn", "model.2.m.0.cv2.bn"):
        assert tied not in names
        assert not graph.groups[tied].prunable and graph.groups[tied].reason
    # with residual streams, the Bottleneck cv2s join the stream of the half they add onto
    streams = build_graph(model, streams=True)
    assert streams.groups["model.2.m.0.cv2.bn"].residual == "model.2.cv1.bn"
    assert streams.groups["model.2.m.0.cv2.bn"].offset == 16  # the second half of cv1's 32 channels
    assert streams.groups["model.4.m.1.cv2.bn"].residual == "model.4.m.0.cv2.bn"
    assert streams.groups["model.12.m.0.cv2.bn"].residual == ""  # neck C2f: no shortcut


def test_stream_units_yolov8s() -> None:
    """A stream is one unit: the second half of cv1 plus every Bottleneck cv2 of the C2f, at their offsets."""
    from yoloslim.cost import prunable_units

    units = prunable_units(build_graph(DetectionModel("yolov8s.yaml", nc=3, verbose=False), streams=True))
    stream = next(u for u in units if ("model.4.cv1.bn", 64) in u.members)
    assert stream.members == (("model.4.cv1.bn", 64), ("model.4.m.0.cv2.bn", 0), ("model.4.m.1.cv2.bn", 0))
    assert stream.size == 64 and units[stream.twin].members == (("model.4.cv1.bn", 0),)


@pytest.mark.parametrize("streams", [False, True])
def test_rules_of_design(model: DetectionModel, streams: bool) -> None:
    """Check every group against the table in docs/DESIGN.md, layer kind by layer kind."""
    graph = build_graph(model, streams)
    prunable = set(prunable_bn_names(model, streams))
    modules = dict(model.named_modules())
    expected: dict[str, bool] = {}
    for i, layer in enumerate(model.model):
        p = f"model.{i}"
        if type(layer).__name__ == "Conv":
            expected[f"{p}.bn"] = True
        elif isinstance(layer, C2f):
            shortcut = layer.m[0].add and not streams
            expected[f"{p}.cv1.bn"] = not shortcut
            expected[f"{p}.cv2.bn"] = True
            for k in range(len(layer.m)):
                expected[f"{p}.m.{k}.cv1.bn"] = True
                expected[f"{p}.m.{k}.cv2.bn"] = not shortcut
        elif isinstance(layer, SPPF):
            expected[f"{p}.cv1.bn"] = expected[f"{p}.cv2.bn"] = True
        elif isinstance(layer, Detect):
            for branch in ("cv2", "cv3"):
                for lvl in range(layer.nl):
                    expected[f"{p}.{branch}.{lvl}.0.bn"] = expected[f"{p}.{branch}.{lvl}.1.bn"] = True
                    assert f"{p}.{branch}.{lvl}.2" in graph.consumers  # fixed outputs: consumer only
    bns = {n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)}
    assert set(expected) == bns == set(graph.groups)  # every BN is accounted for, and nothing else
    assert prunable == {n for n, ok in expected.items() if ok}
    # backbone C2f blocks add a shortcut, neck ones do not; with streams every BN is prunable
    assert any(not ok for ok in expected.values()) != streams and "model.12.cv1.bn" in prunable


def test_consumers_match_conv_widths(model: DetectionModel) -> None:
    modules = dict(model.named_modules())
    graph = build_graph(model)
    convs = {n for n, m in modules.items() if isinstance(m, nn.Conv2d) and not n.endswith("dfl.conv")}
    assert set(graph.consumers) == convs
    for c in graph.consumers.values():
        assert len(c.inputs) == modules[c.name].in_channels
        assert all(g == "" or i < graph.groups[g].size for g, i in c.inputs)


def test_sppf_and_concat_wiring() -> None:
    graph = build_graph(DetectionModel("yolov8n.yaml", nc=3, verbose=False))
    sppf_in = graph.consumers["model.9.cv2.conv"].inputs
    assert sppf_in == tuple(("model.9.cv1.bn", j) for _ in range(4) for j in range(128))
    c2f_in = graph.consumers["model.12.cv1.conv"].inputs  # Upsample(SPPF) ++ layer 6
    assert c2f_in[:256] == tuple(("model.9.cv2.bn", j) for j in range(256))
    assert c2f_in[256:] == tuple(("model.6.cv2.bn", j) for j in range(128))
    head = graph.consumers["model.22.cv3.0.0.conv"].inputs
    assert head == tuple(("model.15.cv2.bn", j) for j in range(64))


def test_not_a_detection_model() -> None:
    with pytest.raises(UnsupportedModuleError, match="DetectionModel"):
        build_graph(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_a_command_traces_each_architecture_once(tiny_ckpt, tiny_data, tmp_path, monkeypatch) -> None:
    """A prune to a target with the Taylor ranking and the repair asks for the graph of the model and of its copies
    four times; it is traced once. A model cut in place, or the streams flag, gets a graph of its own."""
    from yoloslim import channels, steps
    from yoloslim.prune import prune_model

    traced = []
    trace = channels._Tracer.trace
    monkeypatch.setattr(channels._Tracer, "trace", lambda self, model: traced.append(model) or trace(self, model))
    monkeypatch.setattr(channels, "_GRAPHS", {})
    steps.prune(tiny_ckpt, ratio=None, target=("gflops", 0.7), save_dir=tmp_path, data=tiny_data, validate_pruned=False)
    assert len(traced) == 1
    model = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    whole = build_graph(model)
    assert build_graph(model) is whole and build_graph(model, streams=True) is not whole
    pruned, _, _ = prune_model(model, 0.5, ranking=GAMMA)
    assert build_graph(pruned).groups["model.0.bn"].size < whole.groups["model.0.bn"].size
