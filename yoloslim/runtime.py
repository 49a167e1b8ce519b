"""Process-wide settings that must be in place before Ultralytics is imported.

yoloslim runs offline: Ultralytics reaches for the network for telemetry, update checks, plot fonts,
auto-installing requirements and the CUDA AMP check, and onnxruntime sends telemetry of its own. Each
of those either waits on a timeout or fails on a machine without internet, so this module switches
them off (the user's own environment settings win) before `ultralytics` is first imported.

It also undoes Ultralytics' CPU thread cap (`cpu_count - 1` torch threads): on a 2-core machine that
is one core, and training measured 1.4-1.7x faster on both. Set `YOLOSLIM_THREADS` to choose.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

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
    return os.cpu_count() or 1


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
            tmp = target.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)


def configure() -> int:
    """Apply the offline settings and the thread count; return the number of torch threads used."""
    threads = _user_threads()  # read before ultralytics sets OMP_NUM_THREADS=1 on import
    missing = [key for key in _ENV_DEFAULTS if key not in os.environ]
    for key in missing:
        os.environ[key] = _ENV_DEFAULTS[key]
    if "ultralytics" in sys.modules and "YOLO_OFFLINE" in missing:  # its online probe ran without our settings
        warnings.warn("import yoloslim before ultralytics so that its offline settings apply", stacklevel=3)
    from ultralytics.utils import USER_CONFIG_DIR, torch_utils

    # `select_device` calls torch.set_num_threads(NUM_THREADS) on CPU each time a trainer, validator or
    # predictor starts; this is the one value it reads.
    torch_utils.NUM_THREADS = threads
    _install_local_fonts(Path(USER_CONFIG_DIR))
    return threads


THREADS = configure()
