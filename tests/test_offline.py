"""No step touches the network or waits on it, and training uses every core.

Every step of the pipeline runs once with sockets and pip refused: train, sparse, gamma, prune (with its
validation), fine-tune, val, export and onnxruntime latency."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses and whole pipelines: `-m "not slow"` leaves them out

GUARDED_RUN = r"""
import os, socket, subprocess, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:120])
    raise OSError("network disabled by test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
real_popen = subprocess.Popen.__init__
def no_pip(self, args, *a, **k):
    if "pip" in " ".join(map(str, args if isinstance(args, (list, tuple)) else [args])):
        attempts.append("pip: " + str(args))
    return real_popen(self, args, *a, **k)
subprocess.Popen.__init__ = no_pip

import glob
import torch
import yoloslim
from yoloslim import YOLO, steps
from yoloslim.deploy import onnx_runners, side_by_side_latency_ms

data, project = sys.argv[1], sys.argv[2]
args = dict(imgsz=64, batch=8, device="cpu", project=project)
normal = steps.train("yolov8n.yaml", data=data, epochs=1, name="train", plots=True, **args)
threads = torch.get_num_threads()
sparse = steps.train(normal, data=data, epochs=1, name="sparse", sr=0.01, sparsity=0.3, **args)
steps.gamma_report([normal, sparse], out=f"{project}/gamma.png", ratio=0.3)
pruned = steps.prune(sparse, ratio=0.3, save_dir=f"{project}/prune", data=data)
tuned = steps.train(pruned, data=data, epochs=1, name="finetune", finetune=True, **args)
steps.validate(tuned, data=data, imgsz=64, batch=8, project=project, name="val")
onnx = steps.export(tuned, imgsz=64)["onnx"]
side_by_side_latency_ms(onnx_runners([onnx]), 64, rounds=1, repeats=2)
print("THREADS", threads, os.cpu_count())
fonts = glob.glob(os.path.join(os.environ["YOLO_CONFIG_DIR"], "**", "*.ttf"), recursive=True)
print("ORT", os.environ.get("ORT_DISABLE_TELEMETRY"), "FONTS", fonts)
print("ATTEMPTS", attempts)
"""


def test_whole_flow_runs_with_network_refused(tiny_data, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ORT_", "YOLOSLIM_THREADS", "OMP_"))}
    env["YOLO_CONFIG_DIR"] = str(tmp_path / "config")  # a fresh Ultralytics config dir: no font cached yet
    out = subprocess.run(
        [sys.executable, "-c", GUARDED_RUN, tiny_data, str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ATTEMPTS []" in out.stdout, out.stdout[-3000:]
    assert "ORT 1 FONTS []" in out.stdout  # no font file written under another font's name
    cores = os.cpu_count()
    assert f"THREADS {cores} {cores}" in out.stdout
    assert (tmp_path / "runs" / "train" / "results.png").exists()  # plots stay on
