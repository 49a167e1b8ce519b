"""Process-wide settings of `import yoloslim`: the AMP check keeps Ultralytics' decision, fonts, threads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import yoloslim  # noqa: F401
from ultralytics.engine import trainer as ultralytics_trainer
from ultralytics.utils import checks


def _cuda_model() -> SimpleNamespace:
    """Just what check_amp reads first: parameters on a CUDA device (no GPU needed to name one)."""
    return SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cuda", 0))]))


@pytest.mark.parametrize(("gpu", "amp"), [("NVIDIA GeForce GTX 1650", False), ("NVIDIA H100 80GB HBM3", True)])
def test_amp_check_keeps_ultralytics_gpu_list_offline(monkeypatch, gpu, amp) -> None:
    """The GTX 16xx family gets AMP off as Ultralytics decides; elsewhere only the download is skipped."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    attempts = []
    monkeypatch.setattr("socket.socket.connect", lambda *a, **k: attempts.append(a))
    assert ultralytics_trainer.check_amp.offline
    assert ultralytics_trainer.check_amp(_cuda_model()) is amp
    assert not attempts
    import ultralytics

    assert ultralytics.YOLO.__name__ == "YOLO"  # the download stand-in is gone again


def test_amp_check_off_on_cpu() -> None:
    cpu = SimpleNamespace(parameters=lambda: iter([SimpleNamespace(device=torch.device("cpu"))]))
    assert ultralytics_trainer.check_amp(cpu) is False


def test_fonts_are_installed_ones_under_their_own_names(tmp_path, monkeypatch) -> None:
    """Offline, check_font answers with an installed font and writes nothing under Arial's name."""
    from matplotlib import get_data_path

    from yoloslim import runtime

    config = tmp_path / "Ultralytics"
    config.mkdir()
    dejavu = f"{get_data_path()}/fonts/ttf/DejaVuSans.ttf"
    (config / "Arial.Unicode.ttf").write_bytes(open(dejavu, "rb").read())  # what yoloslim 0.1 wrote
    (config / "Arial.ttf").write_bytes(b"a real Arial the user put here")
    runtime._remove_old_font_copies(config)
    assert sorted(p.name for p in config.iterdir()) == ["Arial.ttf"]  # only the false copy is removed
    monkeypatch.setattr("ultralytics.utils.USER_CONFIG_DIR", tmp_path / "empty")
    check = runtime._local_font(lambda font: pytest.fail("Ultralytics' download path was reached"))
    assert str(check("Arial.ttf")).endswith("DejaVuSans.ttf")
    unicode_font = check("Arial.Unicode.ttf")
    assert unicode_font.exists() and unicode_font.name != "Arial.Unicode.ttf"
    assert not (tmp_path / "empty").exists()
    assert checks.check_font.offline  # what Ultralytics' dataset check and Annotator call


@pytest.mark.slow
def test_child_processes_do_not_take_ultralytics_thread_cap_for_the_users(tmp_path) -> None:
    """OMP_NUM_THREADS=1 set by Ultralytics' import is inherited by children: they still use every core,
    while a user's own OMP_NUM_THREADS is honoured."""
    import os
    import subprocess
    import sys

    child = "import yoloslim.runtime as r; print('THREADS', r.THREADS)"
    parent = f"import yoloslim, subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "YOLOSLIM_THREADS"}}
    env = {k: v for k, v in env.items() if not k.startswith("YOLOSLIM_OMP")}
    cores = len(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=300)
    assert f"THREADS {cores}" in out.stdout, out.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-c", parent], env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300
    )
    assert "THREADS 1" in out.stdout, out.stderr[-2000:]
