"""A latency budget (`--target-latency`, issue 19): the search lands on synthetic latency curves, says what the
floors reach when they stop short, and runs the real prune-export-measure path with an injected timer (no test
times anything)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from yoloslim import steps
from yoloslim.checkpoint import load_model, pruned_info
from yoloslim.latency import TOLERANCE, LatencyProbe, search_gflops
from yoloslim.settings import Ranking, check_latency_target
from yoloslim.prune import Pruner
from yoloslim.report import ModelSize

from .conftest import GAMMA, assert_one_line_error, build_model, yoloslim_cli

GAMMA_256 = Ranking(importance="gamma", round_to=256)  # wider than any layer: removes nothing


def lagging(share: float) -> float:
    """A latency curve that lags GFLOPs as CPUs do (0.40x GFLOPs at 0.65x latency): 0.25 + 0.75 * share^0.7."""
    return 0.25 + 0.75 * share**0.7


@pytest.mark.parametrize("ratio", [0.4, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("curve", [lagging, lambda s: s, lambda s: s**1.5, lambda s: 0.5 + 0.5 * s])
def test_search_lands_within_tolerance(ratio, curve) -> None:
    if curve(0.05) > ratio * (1 + TOLERANCE):
        with pytest.raises(ValueError, match="cannot be reached"):
            search_gflops(ratio, curve, floor=0.05)
        return
    search = search_gflops(ratio, curve, floor=0.05)
    share, reached = search.best
    assert search.landed() and reached == curve(share)


def test_search_copes_with_timing_noise() -> None:
    """Each probe off by up to +-3%, as side-by-side medians on a shared machine are: it still lands."""
    rng = random.Random(0)
    for _ in range(20):
        search = search_gflops(0.5, lambda s: lagging(s) * rng.uniform(0.97, 1.03), floor=0.05)
        assert search.landed()


def test_unreachable_latency_says_what_the_floors_reach() -> None:
    with pytest.raises(ValueError, match=r"floors run at 0\.57.x .*raise the target"):
        search_gflops(0.5, lagging, floor=0.3)
    for bad in (0, 1.5, "half", float("nan")):
        with pytest.raises(ValueError, match="target latency"):
            check_latency_target(bad)


@pytest.mark.parametrize("noise", [0.98, 1.0, 1.02])
def test_a_target_near_1_answers_with_a_measured_probe(noise) -> None:
    """The unpruned model's 1.0 bounds the search but is never its answer: at 0.99 the search used to land on that
    seed without measuring anything and save the unpruned model as pruned."""
    measured = []

    def curve(share: float) -> float:
        measured.append(share)
        return share * noise

    search = search_gflops(0.99, curve, floor=0.05)
    share, reached = search.best
    assert share in measured and share < 1 and reached == curve(share) and search.landed()
    assert 1.0 not in search.probes


def test_the_whole_latency_is_the_model_as_it_is() -> None:
    assert search_gflops(1, lambda s: pytest.fail("nothing to measure"), floor=0.05).best == (1.0, 1.0)


def test_real_measuring_path_with_an_injected_timer(tiny_ckpt, tmp_path) -> None:
    """Prune, export and run every probe (and a reference checkpoint) for real; the timer says every run takes 1 ms,
    so no probe can get faster than the unpruned model and the floors are reported as unreachable, with the figure
    measured (1.000x)."""
    clock = itertools.count(step=0.001)
    pruner = Pruner(build_model(), Ranking(importance="gamma", round_to=8))
    probe = LatencyProbe(pruner, 64, tmp_path, rounds=1, repeats=2, timer=lambda: next(clock))
    assert probe.share(0.5) == 1.0 and sorted(p.name for p in tmp_path.iterdir()) == ["unpruned"]  # each removed
    assert probe.checkpoint(tiny_ckpt) == 1.0 and sorted(p.name for p in tmp_path.iterdir()) == ["unpruned"]
    with pytest.raises(ValueError, match=r"cannot be reached on this runtime: the per-layer floors run at 1\.000x"):
        search_gflops(0.5, probe.share, floor=pruner.min_cost_share("gflops"))


def test_prune_to_a_latency_target(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """The prune step searches with its own pruner, records the target and saves the model the search measured."""
    probes = []

    class Synthetic:
        def __init__(self, pruner, imgsz, work, runtime):
            pass

        def share(self, share):
            probes.append(share)
            return lagging(share)

    monkeypatch.setattr(steps, "LatencyProbe", Synthetic)
    out = steps.prune(
        tiny_ckpt, ratio=None, save_dir=tmp_path / "p", target=("latency", 0.6), ranking=GAMMA
    )
    model = load_model(out)[0]
    info = pruned_info(model)
    share = info["target"][1]
    assert info["target_latency"] == 0.6 and info["runtime"] == "onnx" and info["target"][0] == "gflops"
    assert share in probes and abs(lagging(share) / 0.6 - 1) <= TOLERANCE
    imgsz = 64
    kept = ModelSize.of(model, imgsz).gflops / ModelSize.of(load_model(tiny_ckpt)[0], imgsz).gflops
    assert kept <= share + 1e-6
    report = (out.parent / "prune_report.txt").read_text()
    asked = "target latency: 0.6x the unpruned model's on onnx (batch 1, imgsz 64)"
    assert f"{asked}; measured {lagging(share):.3f}x" in report


class Reference:
    """A `LatencyProbe` whose reference checkpoint runs at `measured` of the unpruned latency, probes on `lagging`."""

    measured = 0.6

    def __init__(self, pruner, imgsz, work, runtime):
        pass

    def share(self, share):
        return lagging(share)

    def checkpoint(self, weights):
        assert weights.is_file()
        return self.measured


@pytest.fixture(scope="module")
def smaller(tiny_ckpt, tmp_path_factory) -> Path:
    """A smaller network than tiny_ckpt's (the same model with half its channels cut), to run as fast as."""
    return steps.prune(tiny_ckpt, ratio=0.5, save_dir=tmp_path_factory.mktemp("smaller"), ranking=GAMMA)


def test_prune_to_the_latency_of_another_model(tiny_ckpt, smaller, tmp_path, monkeypatch) -> None:
    """`--target-latency-of`: the reference's measured share is the target; the checkpoint records both."""
    monkeypatch.setattr(steps, "LatencyProbe", Reference)
    out = steps.prune(tiny_ckpt, save_dir=tmp_path / "p", target=("latency", smaller), ranking=GAMMA)
    info = pruned_info(load_model(out)[0])
    assert info["target_latency"] == 0.6 and info["target_latency_of"] == str(smaller.resolve())
    assert abs(lagging(info["target"][1]) / 0.6 - 1) <= TOLERANCE
    report = (out.parent / "prune_report.txt").read_text()
    assert f"target latency: 0.6x the unpruned model's ('{smaller}' measured beside it) on onnx" in report


def test_a_reference_that_cannot_be_faster_writes_nothing(tiny_ckpt, smaller, tmp_path, monkeypatch) -> None:
    """Refused before anything is measured: a missing or unreadable file, the same network as the model to prune
    (timing noise alone would pick a cut), the pruned.pt this run would overwrite; after measuring: a slower one."""
    monkeypatch.setattr(steps, "LatencyProbe", type("Slower", (Reference,), {"measured": 1.2}))
    save = tmp_path / "p"
    unreadable = tmp_path / "text.pt"
    unreadable.write_text("not a checkpoint")
    refusals = {
        tmp_path / "none.pt": "is not a .pt file here",
        unreadable: "not a readable",
        Path(tiny_ckpt): "is the same network as the model to prune",
        smaller: r"runs at 1\.200x the latency of the model to prune: it is not faster",
    }
    for reference, message in refusals.items():
        with pytest.raises(ValueError, match=message):
            steps.prune(tiny_ckpt, save_dir=save, target=("latency", reference), ranking=GAMMA)
        assert not save.exists()
    earlier = steps.prune(tiny_ckpt, ratio=0.3, save_dir=save, ranking=GAMMA)
    before = earlier.read_bytes()
    with pytest.raises(ValueError, match="is the pruned.pt this run would write"):
        steps.prune(smaller, save_dir=save, target=("latency", earlier), ranking=GAMMA)
    assert earlier.read_bytes() == before


def test_a_latency_target_that_needs_no_pruning_writes_nothing(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """The model cut to the share found keeps every channel (here: widths in multiples of 256 keep every layer
    whole) and runs within the tolerance: a one-line error, no pruned.pt."""
    monkeypatch.setattr(steps, "LatencyProbe", lambda *args, runtime: SimpleNamespace(share=lambda share: 1.0))
    with pytest.raises(ValueError, match=r"target latency 0.99 on onnx needs no pruning: .* keeps every channel"):
        steps.prune(
            tiny_ckpt, ratio=None, save_dir=tmp_path / "p", target=("latency", 0.99), ranking=GAMMA_256
        )
    assert not (tmp_path / "p" / "pruned.pt").exists()


@pytest.mark.slow
def test_latency_target_cli_errors(tiny_ckpt) -> None:
    for value in ("0", "1.5"):
        assert_one_line_error(yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--target-latency", value), "(0, 1]")
    assert_one_line_error(
        yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--target-latency", "0.5", "--target-gflops", "0.5"),
        "not allowed with argument",
    )
    for name in ("model.onnx", ""):
        assert_one_line_error(
            yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--target-latency-of", name), "is not a .pt file"
        )


def test_sparse_training_takes_the_gflops_share_of_another_models_latency(tiny_ckpt, smaller, monkeypatch) -> None:
    """`sparse --target-latency-of`: the start model is searched against the reference, as `prune` does."""
    monkeypatch.setattr(steps, "LatencyProbe", Reference)
    share = steps.latency_target_gflops(tiny_ckpt, latency=smaller, data=None, imgsz=64, ranking=GAMMA)
    assert 0 < share < 1 and abs(lagging(share) / Reference.measured - 1) <= TOLERANCE
