"""Injected faults of the third reliability round (docs/RELIABILITY.md, faults 16-20): memory running out in the
repair, Ctrl-C in it, a disk filling while a pair of outputs is written, a training killed before its first
checkpoint, and an INT8 quantization that dies half-way. Each leaves the user's earlier outputs whole and says
what to do."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import yaml

from yoloslim import artifacts, atomic, steps
from yoloslim.checkpoint import finished_training
from yoloslim.reconstruct import Reconstruction, Repair

from .conftest import GAMMA


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (by its relative path) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _raising(fault: BaseException):
    """A stand-in for `Reconstruction.run` that raises `fault`."""

    def run(self, images):
        raise fault

    return run


def test_a_repair_that_fails_leaves_the_earlier_prune_whole(tiny_ckpt, tiny_data, tmp_path, monkeypatch) -> None:
    """Memory running out (torch's allocator error, or MemoryError) becomes one line naming what to lower; Ctrl-C
    and other errors go through as they are. Either way the earlier prune in the folder is left as it was, and a
    new folder is not made."""
    args = {"save_dir": tmp_path / "p", "ranking": GAMMA, "data": tiny_data, "validate_pruned": False}
    steps.prune(tiny_ckpt, ratio=0.6, **args, how=Repair(reconstruct=False))
    before = _files(tmp_path / "p")
    for fault, raised, message in (
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
            MemoryError,
            r"ran out of memory on 16 calibration images at imgsz 64: lower --calib-images \(e.g. 8\) or --imgsz",
        ),
        (MemoryError(), MemoryError, "lower --calib-images"),
        (KeyboardInterrupt(), KeyboardInterrupt, None),
        (RuntimeError("a shape mismatch"), RuntimeError, "^a shape mismatch$"),  # not memory: raised as it was
    ):
        monkeypatch.setattr(Reconstruction, "run", _raising(fault))
        with pytest.raises(raised, match=message):
            steps.prune(tiny_ckpt, ratio=0.3, **args)
        assert _files(tmp_path / "p") == before
    with pytest.raises(RuntimeError):
        steps.prune(tiny_ckpt, ratio=0.3, **{**args, "save_dir": tmp_path / "new"})
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("full_at", ["gamma.png", "gamma.txt"])
def test_a_disk_that_fills_while_the_gamma_pair_is_written_keeps_the_earlier_pair(
    full_at, tiny_ckpt, tmp_path, monkeypatch
) -> None:
    """The histograms and their text summary are one set: the disk filling as either is staged leaves the earlier
    PNG and summary together (was: the new PNG beside the earlier summary)."""
    out = tmp_path / "gamma.png"
    steps.gamma_report([tiny_ckpt], out=out)
    before = _files(tmp_path)
    staged = atomic._staged

    def full_disk(path: Path, write):
        if path.name == full_at:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return staged(path, write)

    monkeypatch.setattr(atomic, "_staged", full_disk)
    with pytest.raises(OSError, match="No space"):
        steps.gamma_report([tiny_ckpt], out=out, ratio=0.5)  # another summary: a threshold line
    assert _files(tmp_path) == before


def test_a_training_killed_before_its_first_checkpoint_starts_again(tiny_ckpt, tiny_data, tmp_path) -> None:
    """SIGKILL in the first epoch leaves a run folder with args.yaml and no checkpoint; the rerun (the pipeline's
    `resume=True`) trains it from the start and finishes it."""
    run = tmp_path / "normal"
    (run / "weights").mkdir(parents=True)
    args = yaml.safe_load((tiny_ckpt.parent.parent / "args.yaml").read_text())
    (run / "args.yaml").write_text(yaml.safe_dump({**args, "project": str(tmp_path), "name": "normal"}))
    where = {"data": tiny_data, "imgsz": 64, "batch": 8, "project": tmp_path, "name": "normal", "workers": 0}
    best = steps.train(tiny_ckpt, epochs=1, resume=True, plots=False, **where)
    assert best.parent == run / "weights" and finished_training(run / "weights" / "last.pt")


def test_an_int8_quantization_that_dies_half_way_keeps_the_earlier_file(tiny_ckpt, tiny_data, tmp_path, monkeypatch):
    """The quantizer writes into the export's temporary folder: dying half-way through (here, the disk filling after
    part of the file) leaves the earlier, checked INT8 file, and no temporary folder."""
    weights = tmp_path / "m.pt"
    shutil.copyfile(tiny_ckpt, weights)
    good = steps.export(weights, imgsz=64, kind="onnx-int8", data=tiny_data)["artifact"]
    checked = good.read_bytes()

    def dies(fp32, int8, *args, **kwargs):
        Path(int8).write_bytes(b"half an onnx file")
        raise OSError(errno.ENOSPC, "No space left on device", str(int8))

    monkeypatch.setattr(artifacts, "quantize_onnx", dies)
    with pytest.raises(OSError, match="No space"):
        steps.export(weights, imgsz=64, kind="onnx-int8", data=tiny_data)
    assert good.read_bytes() == checked
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".yoloslim-")]
