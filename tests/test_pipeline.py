"""The whole pipeline end to end on tiny data: artefacts, table, resuming an interrupted stage, skipping."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import onnxruntime
import pytest
import yaml
from ultralytics.cfg import DEFAULT_CFG

from yoloslim import YOLO
from yoloslim.checkpoint import finished_training, pruned_info
from yoloslim.pipeline import Pipeline, PipelineConfig, run_pipeline
from yoloslim.settings import ONESHOT_FROM, ONESHOT_SHORT_FROM

from .conftest import train_interrupted

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: `-m "not slow"` leaves them out


def _tiny(data: str, run, **settings) -> PipelineConfig:
    """A pipeline on the tiny dataset at 64 px, one epoch per stage unless `settings` say otherwise."""
    base = dict(imgsz=64, batch=8, device="cpu", epochs_normal=1, epochs_sparse=1, epochs_finetune=1, latency_repeats=3)
    return PipelineConfig(data=data, run_dir=str(run), **{**base, **settings})


def test_normal_stage_from_a_pt_keeps_stock_nbs(tiny_ckpt, tiny_data, tmp_path) -> None:
    """Normal training from a trained .pt is stock Ultralytics (its nbs); from a yaml, and in every slimming stage,
    one optimizer step per batch (nbs = batch); a user's nbs wins in every stage."""

    def nbs(pipeline: Pipeline, name: str, weights: str | Path, **kwargs) -> int:
        pipeline.train(name, weights, 1, **kwargs)
        return yaml.safe_load((pipeline.dir / name / "args.yaml").read_text())["nbs"]

    plain = Pipeline(_tiny(tiny_data, tmp_path / "plain"))
    assert nbs(plain, "normal", tiny_ckpt) == DEFAULT_CFG.nbs == 64
    assert nbs(plain, "finetune-0.5", tiny_ckpt, finetune=True) == 8
    assert nbs(Pipeline(_tiny(tiny_data, tmp_path / "scratch")), "normal", "yolov8n.yaml") == 8
    assert nbs(Pipeline(_tiny(tiny_data, tmp_path / "given", train_args={"nbs": 16})), "normal", tiny_ckpt) == 16


def test_pipeline_end_to_end_and_resume(tiny_data, tmp_path) -> None:
    run = tmp_path / "run"
    config = _tiny(tiny_data, run, epochs_normal=2, ratios=(0.3, 0.6), compare_at=0.6, deploy=("onnx-int8",))
    # a normal-training stage killed after its first epoch, as the pipeline would have started it
    train_interrupted(
        YOLO("yolov8n.yaml"),
        data=tiny_data,
        epochs=2,
        imgsz=64,
        batch=8,
        nbs=8,
        device="cpu",
        project=str(run),
        name="normal",
        exist_ok=True,
    )
    assert not finished_training(run / "normal" / "weights" / "last.pt")
    first = Pipeline(config)
    rows = first.run()
    assert first.ran[0] == "normal" and finished_training(run / "normal" / "weights" / "last.pt")
    epochs = [line.split(",")[0] for line in (run / "normal" / "results.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]  # resumed at epoch 2, not restarted
    for artefact in (
        "sparse/weights/best.pt",
        "gamma_hist.png",
        "gamma_hist.txt",
        "prune-0.3/pruned.pt",
        "prune-0.3/prune_report.txt",
        "prune-0.3/prune_layers.csv",
        "finetune-0.6/weights/best.pt",
        "finetune-0.6/weights/best.onnx",
        "prune-normal-0.6/pruned.pt",
        "prune-nofold-0.6/pruned.onnx",
        "results.md",
        "results.csv",
        "comparisons.md",
        "comparisons.csv",
        "map_vs_gflops.png",
    ):
        assert (run / artefact).exists(), artefact
    assert [r["point"] for r in rows] == ["0", "0.3", "0.6"]
    assert "mAP50-95 change vs the normal-trained model" in (run / "results.md").read_text()
    with open(run / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and len((run / "results.md").read_text().splitlines()) >= 5
    params = [int(r["params"]) for r in table]
    gflops = [float(r["gflops"]) for r in table]
    assert params[0] > params[1] > params[2] and gflops[0] > gflops[1] > gflops[2]
    for row in rows:
        session = onnxruntime.InferenceSession(str(row["onnx"]), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].shape == [1, 3, 64, 64] and row["latency_ms"] > 0

    with open(run / "deploy.csv") as f:
        deploy = list(csv.DictReader(f))
    kinds = ("onnx", "onnx-int8")
    assert [(r["model"], r["kind"]) for r in deploy] == [(p, k) for p in ("0", "0.3", "0.6") for k in kinds]
    assert all(float(r["latency_ms"]) > 0 and 0 <= float(r["map50_95"]) <= 1 for r in deploy)
    size = {(r["model"], r["kind"]): float(r["size_mb"]) for r in deploy}
    assert all(size[(p, "onnx-int8")] < 0.5 * size[(p, "onnx")] for p in ("0", "0.3", "0.6"))
    assert "latency x" in (run / "deploy.md").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    second = Pipeline(config)
    again = second.run()
    assert second.ran == []  # every stage was skipped
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == stamps
    assert [r["params"] for r in again] == [r["params"] for r in rows]

    run_pipeline(config)  # same settings: accepted (and skipped)
    saved = json.loads((run / "pipeline.json").read_text())
    del saved["distill"]  # a folder made before the setting existed ran at its default
    (run / "pipeline.json").write_text(json.dumps(saved))
    run_pipeline(config)
    with pytest.raises(ValueError, match="other sr"):
        run_pipeline(replace(config, sr=0.5))


def test_bad_pipeline_settings() -> None:
    with pytest.raises(ValueError, match="format 'tflite' is not one of"):
        PipelineConfig(deploy=("tflite",)).check()
    with pytest.raises(ValueError, match="must be one of the ratios"):
        PipelineConfig(ratios=(0.5,), compare_at=0.6).check()
    with pytest.raises(ValueError, match="must be one of the targets"):
        PipelineConfig(targets=(0.5,), compare_at=0.6).check()
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        PipelineConfig(targets=(0.5, 1.5), compare_at=None).check()
    with pytest.raises(ValueError, match="target 1 is the unpruned model"):
        PipelineConfig(targets=(1.0, 0.5), compare_at=None).check()
    with pytest.raises(ValueError, match="set by the pipeline itself"):
        PipelineConfig(train_args={"epochs": 3}).check()


def test_one_sparse_stage_serves_every_target() -> None:
    """`one_sparse_stage`: every slim row's sparse model is the one zeroed to the smallest slim target."""
    config = PipelineConfig(targets=(0.6, 0.4), one_sparse_stage=True, path="slim")
    assert config.sparse_stages() == {0.6: "sparse-gflops-0.4", 0.4: "sparse-gflops-0.4"}
    assert config.sparse_args(0.6)["target_gflops"] == 0.4
    assert PipelineConfig(targets=(0.6, 0.4), path="slim").sparse_args(0.6)["target_gflops"] == 0.6
    assert PipelineConfig().sparse_stages() == {None: "sparse"}


def test_auto_path_goes_one_shot_from_its_budget_and_slims_below() -> None:
    """`auto` prunes the normal model once for targets of at least ONESHOT_FROM and slims the smaller ones;
    ratios say nothing about compute and slim; `oneshot` needs no sparse stage at all."""
    above, below = ONESHOT_FROM + 0.1, ONESHOT_FROM - 0.1
    auto = PipelineConfig(targets=(above, ONESHOT_FROM, below), one_sparse_stage=True)
    assert [auto.path_of(p) for p in auto.points] == ["oneshot", "oneshot", "slim"]
    assert auto.slim_points == (below,) and auto.sparse_stages() == {below: f"sparse-gflops-{below:g}"}
    assert auto.label(above) == f"{above:g} one-shot" and auto.label(below) == f"{below:g}"
    assert PipelineConfig(ratios=(0.2, 0.8)).sparse_stages() == {None: "sparse"}  # ratios: slim
    oneshot = PipelineConfig(targets=(below,), path="oneshot", sr=0.0, compare_at=None)
    assert oneshot.sparse_stages() == {} and oneshot.path_of(below) == "oneshot"
    oneshot.check()  # no sparse stage, so sr=0 is no error


def test_a_one_shot_row_below_the_short_budget_trains_as_long_as_the_slim_path() -> None:
    """A one-shot GFLOPs row below ONESHOT_SHORT_FROM fine-tunes the slim path's epochs (sparse + fine-tune), where it
    kept up with slimming; from it up, and for slim rows and ratios, `epochs_finetune`."""
    short, tight, below = ONESHOT_SHORT_FROM, (ONESHOT_FROM + ONESHOT_SHORT_FROM) / 2, ONESHOT_FROM / 2
    auto = PipelineConfig(targets=(short, tight, below), epochs_sparse=7, epochs_finetune=2)
    assert [auto.path_of(p) for p in auto.points] == ["oneshot", "oneshot", "slim"]
    assert [auto.finetune_epochs(p) for p in auto.points] == [2, 9, 2]
    epochs = {"epochs_sparse": 7, "epochs_finetune": 2}
    assert PipelineConfig(targets=(below,), path="oneshot", **epochs).finetune_epochs(below) == 9
    assert PipelineConfig(ratios=(0.8,), path="oneshot", **epochs).finetune_epochs(0.8) == 2


def test_pipeline_with_gflops_targets(tiny_data, tmp_path) -> None:
    """One number drives both stages: each slim target's sparse stage zeroes down to it, and its row prunes to it;
    a one-shot target prunes the normal model, repaired, with no sparse stage; with `distill`, fine-tuning learns
    from the normal-trained model."""
    run = tmp_path / "targets"
    above, below = round(ONESHOT_FROM + 0.1, 2), round(ONESHOT_FROM - 0.1, 2)
    config = _tiny(tiny_data, run, epochs_sparse=2, targets=(above, below), compare_at=None, distill=True)
    rows = run_pipeline(config)
    assert [r["point"] for r in rows] == ["1", f"{above:g} one-shot", f"{below:g}"]
    assert not (run / f"sparse-gflops-{above:g}").exists()
    oneshot = run / f"prune-gflops-oneshot-{above:g}"
    assert "error before" in (oneshot / "prune_report.txt").read_text()  # repaired: the per-conv fit table
    made = pruned_info(YOLO(oneshot / "pruned.pt").model)
    assert made["source"] == str((run / "normal" / "weights" / "best.pt").resolve()) and made["repair"]["reconstruct"]
    sparse_args = YOLO(run / f"sparse-gflops-{below:g}" / "weights" / "last.pt").ckpt["train_args"]
    assert sparse_args["target_gflops"] == below and sparse_args["importance"] == "taylor"
    assert sparse_args["warmup_epochs"] == 3 and sparse_args["warmup_bias_lr"] == 0  # trained: every rate from 0
    assert sparse_args["lr_scale"] == 0.1  # the stage's default, fixed in the arguments: it continues a trained model
    assert sparse_args["round_to"] == 8  # the pipeline's width multiple, shared by the zeroing and pruning
    normal_args = YOLO(run / "normal" / "weights" / "last.pt").ckpt["train_args"]
    assert normal_args["warmup_epochs"] == 3 and normal_args["lr_scale"] == 1  # normal: stock Ultralytics
    for point in ("1", f"{above:g}-one-shot", f"{below:g}"):  # distill: every fine-tuning learns from the normal model
        tuned = YOLO(run / f"finetune-{point}" / "weights" / "last.pt").ckpt["train_args"]
        assert Path(tuned["distill_model"]) == run / "normal" / "weights" / "best.pt"
        assert "train/dis_loss" in (run / f"finetune-{point}" / "results.csv").read_text().splitlines()[0]
        epochs = config.finetune_epochs(above) if "one-shot" in point else config.epochs_finetune
        assert tuned["epochs"] == epochs
    assert config.finetune_epochs(above) == config.epochs_sparse + config.epochs_finetune  # below ONESHOT_SHORT_FROM
    for row, target in zip(rows, (1.0, above, below)):
        assert row["gflops"] / rows[0]["gflops"] == pytest.approx(target, rel=0.02)
    report = (run / f"prune-gflops-{below:g}" / "prune_report.txt").read_text()
    assert f"target gflops {below:.3f}x" in report and "largest |gamma| removed 0" in report  # only zeros went
    assert "| target GFLOPs |" in (run / "results.md").read_text() and (run / "map_vs_gflops.png").exists()


def test_a_run_folder_knows_its_inputs_by_content_not_by_how_they_were_typed(tiny_data, tmp_path, monkeypatch):
    """Issue 33, row 1: folders A and B each hold a `d2/data.yaml` of the same text (its `path: d2` resolves against
    the working folder), over other images. Resumed from B, the run folder made from A's data refuses it, naming
    both; A's data reached by its absolute path is the same input, and resumes."""
    monkeypatch.setattr(Pipeline, "run", lambda self: [])  # what is checked here happens before any stage
    text = yaml.safe_dump({**yaml.safe_load(Path(tiny_data).read_text()), "path": "d2"})
    for folder in ("A", "B"):
        shutil.copytree(Path(tiny_data).parent, tmp_path / folder / "d2", ignore=shutil.ignore_patterns("*.cache"))
        (tmp_path / folder / "d2" / "data.yaml").write_text(text)
    label = next((tmp_path / "B" / "d2" / "labels" / "train").glob("*.txt"))
    label.write_text(label.read_text() * 2)  # B's set: one label file differs
    run_dir = str(tmp_path / "pm")
    monkeypatch.chdir(tmp_path / "A")
    run_pipeline(PipelineConfig(data="d2/data.yaml", run_dir=run_dir))
    run_pipeline(PipelineConfig(data=str(tmp_path / "A" / "d2" / "data.yaml"), run_dir=run_dir))  # same file
    recorded = json.loads((tmp_path / "pm" / "pipeline.json").read_text())["inputs"]
    assert recorded["data"]["path"] == str(tmp_path / "A" / "d2" / "data.yaml")
    monkeypatch.chdir(tmp_path / "B")
    with pytest.raises(ValueError, match=r"other data \(.*/A/d2/data.yaml there, .*/B/d2/data.yaml now\)"):
        run_pipeline(PipelineConfig(data="d2/data.yaml", run_dir=run_dir))
