"""Fine-tuning keeps the pruned architecture (also on resume); ONNX export matches the torch model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnxruntime
import pytest
import yaml
from ultralytics.nn.distill_model import DistillationModel
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils.torch_utils import unwrap_model

from yoloslim import YOLO, cli, deploy, steps
from yoloslim.checkpoint import load_model, pruned_info
from yoloslim.data import demo_dataset

from .conftest import TINY, stock_predict, train_interrupted, yoloslim_cli


def _params(path: Path) -> int:
    model, _ = load_model(path)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def pruned(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, ratio=0.5, save_dir=tmp_path_factory.mktemp("pruned"))


def test_finetune_keeps_pruned_count_also_after_resume(pruned, tiny_data, runs) -> None:
    count = _params(pruned)
    train_interrupted(YOLO(pruned), data=tiny_data, epochs=2, finetune=True, project=str(runs), name="ft", **TINY)
    last = runs / "ft" / "weights" / "last.pt"
    assert _params(last) == count
    resumed = YOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.args.finetune is True and resumed.trainer.start_epoch == 1
    assert _params(Path(resumed.trainer.last)) == count
    assert yaml.safe_load((runs / "ft" / "args.yaml").read_text())["finetune"] is True


@pytest.mark.slow
def test_finetune_learns_from_a_teacher_and_saves_the_pruned_student(pruned, tiny_ckpt, tiny_data, runs) -> None:
    """Ultralytics' distillation wraps the pruned model (also on resume); the hooks and best.pt see the student."""
    count = _params(pruned)
    args = dict(data=tiny_data, epochs=2, finetune=True, distill_model=str(tiny_ckpt), project=str(runs), name="kd")
    train_interrupted(YOLO(pruned), **args, **TINY)
    mid_run = runs / "kd" / "weights" / "last.pt"
    assert isinstance(load_checkpoint(mid_run)[0], DistillationModel)  # Ultralytics saves the wrapper mid-run
    for model in (load_model(mid_run)[0], YOLO(mid_run).model):  # yoloslim reads its student
        assert pruned_info(model) is not None and sum(p.numel() for p in model.parameters()) == count
    resumed = YOLO(mid_run)
    resumed.train(resume=True)
    assert isinstance(unwrap_model(resumed.trainer.model), DistillationModel) and resumed.trainer.start_epoch == 1
    best = Path(resumed.trainer.best)
    model, _ = load_model(best)
    assert not isinstance(model, DistillationModel) and pruned_info(model) is not None and _params(best) == count
    header = (runs / "kd" / "results.csv").read_text().splitlines()[0]
    assert "train/dis_loss" in header and "sparsity/median_gamma" in header
    assert f"PARAMS {count} RESULTS 1 TASK detect" in stock_predict(best)


def test_teacher_must_exist_and_is_not_for_sparsity(pruned, tiny_ckpt, tiny_data, tmp_path) -> None:
    missing = str(tmp_path / "normal.pt")
    stage = {"data": tiny_data, "epochs": 1, "imgsz": 64, "batch": 8, "device": "cpu", "project": tmp_path}
    with pytest.raises(FileNotFoundError, match="teacher .* is not an existing .pt checkpoint"):
        steps.train(pruned, name="a", finetune=True, distill_model=missing, **stage)
    with pytest.raises(FileNotFoundError, match="teacher .* is not an existing .pt checkpoint"):
        YOLO(pruned).train(data=tiny_data, distill_model=missing, project=str(tmp_path), name="b", **TINY)
    with pytest.raises(ValueError, match="not for sparsity training"):
        steps.train(tiny_ckpt, name="c", sr=0.01, distill_model=str(tiny_ckpt), **stage)
    assert list(tmp_path.iterdir()) == []


def test_pruned_marker_alone_fine_tunes_the_pruned_model(pruned, tiny_data, runs) -> None:
    best = steps.train(pruned, data=tiny_data, epochs=1, imgsz=64, batch=8, device="cpu", project=runs, name="marker")
    assert _params(best) == _params(pruned)


def test_finetune_needs_a_pruned_checkpoint(tiny_data, runs) -> None:
    with pytest.raises(ValueError, match="finetune=True needs a pruned checkpoint"):
        YOLO("yolov8n.yaml").train(data=tiny_data, finetune=True, epochs=1, project=str(runs), name="nofine", **TINY)


def test_other_class_count_is_a_clear_error(pruned, tmp_path, runs) -> None:
    data = demo_dataset(root=tmp_path, n_train=4, n_val=2, imgsz=64)
    cfg = yaml.safe_load(data.read_text())
    cfg["names"] = {0: "shape"}
    one_class = tmp_path / "one.yaml"
    one_class.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="predicts 3 classes but dataset .* has 1"):
        YOLO(pruned).train(data=str(one_class), epochs=1, finetune=True, project=str(runs), name="nc", **TINY)


def test_onnx_export_matches_torch(pruned, capsys) -> None:
    result = steps.export(pruned, imgsz=64)
    onnx_file = Path(result["onnx"])
    assert onnx_file.exists() and onnx_file.parent == pruned.parent
    assert result["max_diff"] <= 1e-3
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]
    assert "largest output difference" in capsys.readouterr().out


def test_validate_reports_metrics_and_size(pruned, tiny_data) -> None:
    metrics = steps.validate(pruned, data=tiny_data, imgsz=64, batch=8, project=pruned.parent, name="val")
    assert metrics["params"] == _params(pruned) and metrics["gflops"] > 0
    assert 0 <= metrics["map50_95"] <= metrics["map50"] <= 1


@pytest.mark.slow
def test_prune_exports_the_pruned_model_in_the_same_command(tiny_ckpt, tiny_data, tmp_path, monkeypatch) -> None:
    """`prune --export onnx onnx-int8` leaves pruned.pt and both checked artifacts beside it, at the size it was
    pruned at (the INT8 one calibrated and validated on --data); a kind whose runtime is not installed is refused
    before anything is pruned, and nothing is written."""
    argv = ["prune", "--weights", str(tiny_ckpt), "--data", tiny_data, "--prune-ratio", "0.3", "--importance", "gamma"]
    out = yoloslim_cli(*argv, "--save-dir", str(tmp_path / "p"), "--export", "onnx", "onnx-int8")
    assert out.returncode == 0, out.stderr
    assert {"pruned.pt", "pruned.onnx", "pruned_int8.onnx"} <= {p.name for p in (tmp_path / "p").iterdir()}
    said = [line for line in out.stdout.splitlines() if line.startswith(("onnx ", "onnx-int8 "))]
    assert [line.split()[0] for line in said] == ["onnx", "onnx-int8"] and all("at imgsz 64" in s for s in said)
    real = importlib.util.find_spec
    monkeypatch.setattr(deploy.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    with pytest.raises(SystemExit, match=r"yoloslim prune: error: openvino needs the 'openvino' package"):
        cli.main([*argv, "--save-dir", str(tmp_path / "q"), "--export", "onnx", "openvino"])
    assert not (tmp_path / "q").exists()
