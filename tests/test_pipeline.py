"""The whole pipeline end to end on tiny data, and its resumption."""

from __future__ import annotations

import csv

import onnxruntime

from yoloslim.pipeline import Pipeline, PipelineConfig


def test_pipeline_end_to_end_and_resume(tiny_data, tmp_path) -> None:
    config = PipelineConfig(data=tiny_data, run_dir=str(tmp_path / "run"), imgsz=64, batch=8, device="cpu",
                            epochs_normal=1, epochs_sparse=1, epochs_finetune=1, ratios=(0.3, 0.6),
                            compare_ratio=0.6, latency_repeats=3)
    first = Pipeline(config)
    rows = first.run()
    run = tmp_path / "run"
    for artefact in ("normal/weights/best.pt", "sparse/weights/best.pt", "gamma_hist.png", "gamma_hist.txt",
                     "prune-0.3/pruned.pt", "prune-0.3/prune_report.txt", "prune-0.3/prune_layers.csv",
                     "finetune-0.6/weights/best.pt", "finetune-0.6/weights/best.onnx", "prune-normal-0.6/pruned.pt",
                     "prune-nofold-0.6/pruned.onnx", "results.md", "results.csv", "comparisons.md",
                     "map_vs_gflops.png"):
        assert (run / artefact).exists(), artefact
    assert [r["ratio"] for r in rows] == ["0", "0.3", "0.6"]
    with open(run / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and len((run / "results.md").read_text().splitlines()) >= 5
    params = [int(r["params"]) for r in table]
    gflops = [float(r["gflops"]) for r in table]
    assert params[0] > params[1] > params[2] and gflops[0] > gflops[1] > gflops[2]
    for row in rows:
        session = onnxruntime.InferenceSession(str(row["onnx"]), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape == [1, 3, 64, 64] and row["latency_ms"] > 0
    assert "normal" in first.ran and "finetune-0.3" in first.ran
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    second = Pipeline(config)
    again = second.run()
    assert second.ran == []  # every stage was skipped
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == stamps
    assert [r["params"] for r in again] == [r["params"] for r in rows]
