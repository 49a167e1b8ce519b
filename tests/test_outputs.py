"""A step's outputs are written as a set: a failure at any point leaves the old set or the new one, never a mix
(docs/RELIABILITY.md, faults 11-13)."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

from yoloslim import artifacts, atomic, steps
from yoloslim.checkpoint import load_model, pruned_info

from .conftest import GAMMA


@pytest.fixture(scope="module")
def pruned(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, ratio=0.4, save_dir=tmp_path_factory.mktemp("pruned"), ranking=GAMMA)


def _set(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_write_set_out_of_disk_keeps_the_old_set(tmp_path, monkeypatch) -> None:
    atomic.write_set(tmp_path, {"report.txt": b"old report", "model.pt": b"old model"}, last="model.pt")
    staged = atomic._staged

    def full_disk(path: Path, write):
        if path.name == "model.pt":  # the report is staged already: the failure comes half-way through the set
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return staged(path, write)

    monkeypatch.setattr(atomic, "_staged", full_disk)
    with pytest.raises(OSError, match="No space"):
        atomic.write_set(tmp_path, {"report.txt": b"new report", "model.pt": b"new model"}, last="model.pt")
    assert _set(tmp_path) == {"model.pt": b"old model", "report.txt": b"old report"}  # no staged file left either


def test_write_set_ctrl_c_while_staging_keeps_the_old_set(tmp_path, monkeypatch) -> None:
    atomic.write_set(tmp_path, {"a.txt": b"old a", "b.pt": b"old b"}, last="b.pt")
    staged = atomic._staged

    def interrupted(path: Path, write):
        if path.name != "b.pt":
            return staged(path, write)

        def half(f):
            f.write(b"half of the new b")
            raise KeyboardInterrupt

        return staged(path, half)

    monkeypatch.setattr(atomic, "_staged", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_set(tmp_path, {"a.txt": b"new a", "b.pt": b"new b"}, last="b.pt")
    assert _set(tmp_path) == {"a.txt": b"old a", "b.pt": b"old b"}


def _after_each_rename(monkeypatch, event: Exception | None) -> None:
    """Make every rename of `atomic` go through, then send Ctrl-C (`event` None) or raise `event`."""
    replace = os.replace

    def replace_then(src, dst):
        replace(src, dst)
        if event is None:
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise event

    monkeypatch.setattr(atomic.os, "replace", replace_then)


def test_write_set_ctrl_c_during_the_renames_finishes_the_set_first(tmp_path, monkeypatch) -> None:
    atomic.write_set(tmp_path, {"a.txt": b"old a", "b.pt": b"old b"}, last="b.pt")
    _after_each_rename(monkeypatch, None)  # Ctrl-C after the first rename: delivered once the whole set is in place
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic.write_set(tmp_path, {"a.txt": b"new a", "b.pt": b"new b"}, last="b.pt")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _set(tmp_path) == {"a.txt": b"new a", "b.pt": b"new b"}


def test_write_set_killed_between_renames_leaves_no_finished_marker(tmp_path, monkeypatch) -> None:
    """SIGKILL cannot be held back: between two renames the set has no `last`, which reruns read as not done."""
    atomic.write_set(tmp_path, {"a.txt": b"old a", "b.pt": b"old b"}, last="b.pt")
    _after_each_rename(monkeypatch, SystemExit("killed"))  # stands in for the process ending there
    with pytest.raises(SystemExit):
        atomic.write_set(tmp_path, {"a.txt": b"new a", "b.pt": b"new b"}, last="b.pt")
    assert _set(tmp_path) == {"a.txt": b"new a"}


def test_prune_that_fails_to_write_keeps_the_previous_prune(tiny_ckpt, tmp_path, monkeypatch) -> None:
    """The out-of-disk case of issue 20: report and CSV said 0.2 while pruned.pt was still the 0.6 model."""
    first = steps.prune(tiny_ckpt, ratio=0.6, save_dir=tmp_path, ranking=GAMMA)
    before = _set(tmp_path)
    staged = atomic._staged

    def full_disk(path: Path, write):
        if path.name == "pruned.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return staged(path, write)

    monkeypatch.setattr(atomic, "_staged", full_disk)
    with pytest.raises(OSError, match="No space"):
        steps.prune(tiny_ckpt, ratio=0.2, save_dir=tmp_path, ranking=GAMMA)
    assert _set(tmp_path) == before and pruned_info(load_model(first)[0])["ratio"] == 0.6
    assert "0.6" in (tmp_path / "prune_report.txt").read_text()


def test_export_replaces_the_checked_file_only_after_its_check(pruned, monkeypatch) -> None:
    """A failed check leaves the previous, checked ONNX file in place (issue 20, #3)."""
    good = steps.export(pruned, imgsz=64)
    checked = Path(good["onnx"]).read_bytes()

    def failing_check(run, model, imgsz):
        raise ValueError("ONNX output shapes differ")

    monkeypatch.setattr(artifacts, "output_difference", failing_check)
    with pytest.raises(ValueError, match="shapes differ"):
        steps.export(pruned, imgsz=96)
    assert Path(good["onnx"]).read_bytes() == checked
    assert not [p for p in pruned.parent.iterdir() if p.name.startswith(".yoloslim-export-")]


def test_export_rounds_imgsz_to_the_stride_and_checks_at_that_size(pruned) -> None:
    result = steps.export(pruned, imgsz=100)
    assert result["imgsz"] == 128 and result["max_diff"] <= 1e-3
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result["onnx"]), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 128, 128]


@pytest.mark.parametrize("imgsz", [0, -32, 64.5, "64"])
def test_export_refuses_a_size_that_is_not_a_positive_whole_number(pruned, imgsz) -> None:
    before = sorted(p.name for p in pruned.parent.iterdir())
    with pytest.raises(ValueError, match="must be a whole number > 0"):
        steps.export(pruned, imgsz=imgsz)
    assert sorted(p.name for p in pruned.parent.iterdir()) == before


def test_export_name_too_long_is_a_clear_error(pruned, tmp_path) -> None:
    """The .onnx name is 2 bytes longer than the .pt name: a checkpoint named with PC_NAME_MAX - 1 bytes (.pt included)
    cannot be exported beside it."""
    long = tmp_path / ("w" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 3) + ".pt")
    long.write_bytes(pruned.read_bytes())
    with pytest.raises(ValueError, match="too long a file name"):
        steps.export(long, imgsz=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == [long.name]


def test_validate_reports_gflops_at_the_size_it_ran(pruned, tiny_data) -> None:
    at_100 = steps.validate(pruned, data=tiny_data, imgsz=100, batch=8, project=pruned.parent, name="val100")
    at_128 = steps.validate(pruned, data=tiny_data, imgsz=128, batch=8, project=pruned.parent, name="val128")
    assert at_100["imgsz"] == 128 and at_100["gflops"] == at_128["gflops"] > 0
    assert at_100["map50_95"] == at_128["map50_95"]


def test_fit_imgsz_rounds_as_ultralytics_does() -> None:
    """The rule is Ultralytics' own: if its `check_imgsz` changes, this fails."""
    from ultralytics.utils.checks import check_imgsz as ultralytics_check_imgsz

    from yoloslim.sizes import fit_imgsz

    from .conftest import build_model

    model = build_model()
    for imgsz in (1, 31, 32, 33, 100, 640, 641):
        assert fit_imgsz(imgsz, model) == ultralytics_check_imgsz(imgsz, stride=32, min_dim=1, max_dim=1)
    assert int(torch.max(model.stride)) == 32
