"""Process-wide settings that must be in place before Ultralytics is imported.

yoloslim runs offline: Ultralytics reaches for the network for telemetry, update checks, plot fonts,
auto-installing requirements and the CUDA AMP check, and onnxruntime sends telemetry of its own. Each
of those either waits on a timeout or fails on a machine without internet, so this module switches
them off (the user's own environment settings win) before `ultralytics` is first imported.

On CUDA, Ultralytics' AMP check would download yolo26n.pt once; without that file it is skipped
(AMP stays on, as Ultralytics itself decides when the download fails).

It also undoes Ultralytics' CPU thread cap (`cpu_count - 1` torch threads): on a 2-core machine that
is one core, and training measured 1.4-1.7x faster on both. Set `YOLOSLIM_THREADS` to choose.
`import yoloslim` must come before `import ultralytics`, which probes the network at import.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENV_DEFAULTS = {
    "YOLO_OFFLINE": "1",  # no telemetry, no update check, no hub/platform calls (Ultralytics' `is_online()`)
    "YOLO_AUTOINSTALL": "False",  # never pip-install missing requirements at run time
    "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime's own telemetry
}
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the fonts Ultralytics' `check_font` would download


def _user_threads() -> int:
    """Torch threads for CPU work: YOLOSLIM_THREADS, else the user's OMP_NUM_THREADS, else every core."""
    for var in ("YOLOSLIM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _install_local_fonts(config_dir: Path) -> None:
    """Put a font where `check_font` looks first, so plotting never tries to download Arial.

    matplotlib ships DejaVu Sans (wide Unicode coverage); Ultralytics only needs *a* TrueType font.
    """
    from matplotlib import get_data_path

    source = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in _FONTS:
        target = config_dir / name
        if not target.exists() and source.exists():
            config_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=config_dir)  # unique: DDP ranks import at once
            os.close(fd)
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


def _offline_amp_check(check_amp: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Ultralytics' AMP check, minus its one-time download of yolo26n.pt when that file is not there.

    Offline, the download fails after a network attempt and Ultralytics then keeps AMP on; this
    reaches the same answer without touching the network.
    """
    from ultralytics.utils import LOGGER, ONLINE, WEIGHTS_DIR

    def check(model: Any) -> bool:
        device = next(model.parameters()).device
        if not ONLINE and device.type == "cuda" and not (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
            LOGGER.info("AMP: checks skipped offline (no yolo26n.pt in the weights dir); AMP stays on")
            return True
        return check_amp(model)

    check.offline = True
    return check


def configure() -> int:
    """Apply the offline settings and the thread count; return the number of torch threads used."""
    threads = _user_threads()  # read before ultralytics sets OMP_NUM_THREADS=1 on import
    missing = [key for key in _ENV_DEFAULTS if key not in os.environ]
    for key in missing:
        os.environ[key] = _ENV_DEFAULTS[key]
    if "ultralytics" in sys.modules and "YOLO_OFFLINE" in missing:  # its online probe ran without our settings
        warnings.warn("import yoloslim before ultralytics so that its offline settings apply", stacklevel=3)
    from ultralytics.engine import trainer
    from ultralytics.utils import USER_CONFIG_DIR, torch_utils

    # `select_device` calls torch.set_num_threads(NUM_THREADS) on CPU each time a trainer, validator or
    # predictor starts; this is the one value it reads.
    torch_utils.NUM_THREADS = threads
    if not getattr(trainer.check_amp, "offline", False):
        trainer.check_amp = _offline_amp_check(trainer.check_amp)  # the name BaseTrainer._setup_train calls
    _install_local_fonts(Path(USER_CONFIG_DIR))
    return threads


THREADS = configure()
