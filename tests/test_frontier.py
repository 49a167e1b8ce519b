"""bench/frontier.py: points over seeds, their intervals, one artifact per point timed, and its refusals."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import frontier  # noqa: E402
from common import paired_interval, welch_interval  # noqa: E402

from yoloslim import steps

from .conftest import GAMMA


@pytest.fixture(scope="module")
def pruned_ckpt(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, ratio=0.4, save_dir=tmp_path_factory.mktemp("pruned"), ranking=GAMMA)


def test_welch_interval_matches_scipy() -> None:
    a, b = [0.51, 0.53, 0.52], [0.48, 0.50, 0.47, 0.49]
    diff, low, high = welch_interval(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(0.035) and (low, high) == pytest.approx((expected.low, expected.high))
    assert welch_interval([0.5], b)[1:] == (welch_interval([0.5], b)[0],) * 2  # one value: no interval


def test_a_frontier_of_two_starts(tiny_ckpt, pruned_ckpt, tiny_data, tmp_path) -> None:
    """Two starts, a dense point of two seeds and a pruned point of one: each point's seeds scored and their interval,
    the first seed's artifact timed and validated, the difference from the reference, a CSV and the plot."""
    for i in range(2):
        (tmp_path / f"d{i}").mkdir()
        shutil.copyfile(tiny_ckpt, tmp_path / f"d{i}" / "last.pt")
    out = tmp_path / "frontier.md"
    argv = ["--data", tiny_data, "--imgsz", "64", "--kinds", "onnx", "--repeats", "2", "--rounds", "1"]
    argv += ["--points", f"a/dense={tmp_path}/d*/last.pt", f"b/0.6x={pruned_ckpt}", "--reference", "a/dense"]
    records = frontier.main([*argv, "--run-dir", str(tmp_path / "runs"), "--out", str(out)])
    dense, cut = records
    assert dense["seeds"] == 2 and dense["scores"][0] == dense["scores"][1] and dense["dense"] and not cut["dense"]
    assert (dense["low"], dense["high"]) == (dense["map50_95"],) * 2  # identical seeds: an interval of width 0
    assert (cut["map50_95"], cut["low"], cut["high"]) == paired_interval(cut["scores"])
    assert cut["gflops"] < dense["gflops"] and all(r["kinds"]["onnx"]["latency_ms"] > 0 for r in records)
    assert dense["kinds"]["onnx"]["map50_95"] == pytest.approx(dense["map50_95"], abs=0.02)  # artifact vs torch
    text = out.read_text()
    assert "vs a/dense (pt)" in text and "bench/frontier.py" in text and "CPUs" in text
    assert text.count("(one seed: no interval)") == 1 and text.count("(one seed)") == 1  # the 1-seed point
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [(r["start"], r["point"], r["seeds"]) for r in rows] == [("a", "dense", "2"), ("b", "0.6x", "1")]
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize(
    "points, extra, message",
    [
        (["a-dense=x.pt"], [], "is not START/POINT=GLOB"),
        (["a/dense=/nowhere/*.pt"], [], "no checkpoint matches"),
        (["a/dense={w}", "a/dense={w}"], [], "names a point twice"),
        (["a/dense={w}"], ["--reference", "b/dense"], "is not one of the points"),
        (["a/dense={w}"], ["--kinds", "onnx-int8"], "must start with onnx"),
        (["a/dense={w}"], ["--runtime", "openvino"], "must be one of --kinds"),
    ],
)
def test_bad_frontiers_are_refused_before_any_work(points, extra, message, tiny_ckpt, tmp_path, capsys) -> None:
    argv = ["--data", "demo", "--kinds", "onnx", "--run-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as stopped:
        frontier.main([*argv, "--points", *(p.format(w=tiny_ckpt) for p in points), *extra])
    assert stopped.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "runs").exists()
