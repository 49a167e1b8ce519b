"""No step touches the network or waits on it, and training uses every core."""

from __future__ import annotations

import os
import subprocess
import sys

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

import torch
import yoloslim
from yoloslim import YOLO, steps
data = sys.argv[1]
model = YOLO("yolov8n.yaml")
model.train(data=data, epochs=1, imgsz=64, batch=8, plots=True, project=sys.argv[2], name="offline", exist_ok=True)
threads = torch.get_num_threads()
steps.validate(model.trainer.best, data, imgsz=64, batch=8, project=sys.argv[2], name="val")
steps.export(model.trainer.best, imgsz=64)
print("THREADS", threads, os.cpu_count())
print("ORT", os.environ.get("ORT_DISABLE_TELEMETRY"), "FONT", os.path.exists(os.path.join(os.environ["YOLO_CONFIG_DIR"], "Ultralytics", "Arial.ttf")))
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
    assert "ORT 1 FONT True" in out.stdout
    cores = os.cpu_count()
    assert f"THREADS {cores} {cores}" in out.stdout
    assert (tmp_path / "runs" / "offline" / "results.png").exists()  # plots stay on
