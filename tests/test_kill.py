"""The pipeline killed with SIGKILL at each boundary resumes on the next run and never trusts a half-written file."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import onnxruntime
import pytest

from yoloslim.checkpoint import load_model, readable

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: `-m "not slow"` leaves them out

# Runs the tiny pipeline in a fresh process; INJECT names the fault to inject (a SIGKILL at one boundary).
RUN = r"""
import os, signal, sys
from pathlib import Path
import yoloslim
from yoloslim.pipeline import PipelineConfig, run_pipeline

data, run, inject = sys.argv[1], sys.argv[2], sys.argv[3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)

if inject == "prune":  # pruned.pt's bytes are written, the rename has not happened
    import yoloslim.atomic as atomic
    real_fsync = os.fsync
    def fsync(fd):
        real_fsync(fd)
        if ".pruned.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            die()
    atomic.os.fsync = fsync
elif inject in {"epoch", "last"}:  # during fine-tuning's second epoch / while its last.pt is written
    from yoloslim.trainer import SlimTrainer
    real_step, real_write = SlimTrainer.optimizer_step, Path.write_bytes
    def step(self):
        if inject == "epoch" and self.args.name.startswith("finetune") and self.epoch == 1:
            die()
        return real_step(self)
    def write_bytes(self, data):
        if inject == "last" and self.name == "last.pt" and "finetune" in str(self):
            real_write(self, data[: len(data) // 2])
            die()
        return real_write(self, data)
    SlimTrainer.optimizer_step = step
    Path.write_bytes = write_bytes
elif inject == "export":  # the exporter is writing the ONNX file
    import onnx
    def save(model, f, *a, **k):
        Path(f).write_bytes(model.SerializeToString()[:1000])
        die()
    onnx.save = save

run_pipeline(PipelineConfig(data=data, run_dir=run, imgsz=64, batch=8, device="cpu", epochs_normal=1,
    epochs_sparse=1, epochs_finetune=2, sparsity=0.5, ratios=(0.5,), compare_at=None, latency_repeats=2))
print("PIPELINE DONE")
"""


def _run(tiny_data: str, run: Path, inject: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN, tiny_data, str(run), inject], capture_output=True, text=True, timeout=900
    )


@pytest.mark.parametrize("order", [("prune", "epoch", "last", "export")])
def test_killed_pipeline_recovers(tiny_data, tmp_path, order) -> None:
    run = tmp_path / "run"
    finetune = run / "finetune-0"
    for inject in order:
        out = _run(tiny_data, run, inject)
        assert out.returncode == -signal.SIGKILL, f"{inject}: {out.returncode}\n{out.stderr[-3000:]}"
        if inject == "prune":
            assert not (run / "prune-0" / "pruned.pt").exists()  # only the finished rename counts
        elif inject == "epoch":
            assert load_model(finetune / "weights" / "last.pt")[1]["epoch"] == 0  # one epoch saved
        elif inject == "last":
            assert not readable(finetune / "weights" / "last.pt")  # truncated by the kill
        elif inject == "export":
            assert not (finetune / "weights" / "best.onnx").exists()  # the partial file is not where a rerun looks
    out = _run(tiny_data, run, "none")
    assert out.returncode == 0 and "PIPELINE DONE" in out.stdout, out.stderr[-3000:]
    assert (run / "results.md").exists() and readable(finetune / "weights" / "last.pt")
    for onnx_file in (finetune / "weights" / "best.onnx", run / "finetune-0.5" / "weights" / "best.onnx"):
        onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert (finetune / "weights" / "last.pt.unreadable").exists()  # set aside when its stage restarted
