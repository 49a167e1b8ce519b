"""Process-wide settings that must be in place before Ultralytics is imported.

yoloslim runs offline: Ultralytics reaches for the network for telemetry, update checks, plot fonts,
auto-installing requirements and the CUDA AMP check, and onnxruntime sends telemetry of its own. Each
of those either waits on a timeout or fails on a machine without internet, so this module switches
them off (the user's own environment settings win) before `ultralytics` is first imported.

On CUDA, Ultralytics' AMP check would download yolo26n.pt once; offline and without that file only that
step is skipped (AMP stays on, as Ultralytics itself decides when the download fails), and the rest of
its decision, its list of GPUs where AMP breaks training included, stands. Plot fonts that Ultralytics
would download are answered from installed fonts, under their own names.

It also undoes Ultralytics' CPU thread cap (`cpu_count - 1` torch threads): on a 2-core machine that
is one core (docs/DESIGN.md, "Measured on this machine"). Set `YOLOSLIM_THREADS` to choose.
`import yoloslim` must come before `import ultralytics`, which probes the network at import.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENV_DEFAULTS = {
    "YOLO_OFFLINE": "1",  # no telemetry, no update check, no hub/platform calls (Ultralytics' `is_online()`)
    "YOLO_AUTOINSTALL": "False",  # never pip-install missing requirements at run time
    "ORT_DISABLE_TELEMETRY": "1",  # onnxruntime's own telemetry
}


_OMP_MARK = "YOLOSLIM_OMP_FROM_ULTRALYTICS"  # OMP_NUM_THREADS as Ultralytics' import set it, not the user


def _user_threads() -> int:
    """Torch threads for CPU work: YOLOSLIM_THREADS (at most one per core), else the user's OMP_NUM_THREADS, else
    every core.

    Importing Ultralytics sets OMP_NUM_THREADS=1 when it is unset, and child processes inherit it; the
    value is then marked, so that a child does not take Ultralytics' cap for the user's choice. Threads beyond the
    cores only wait for each other at every operation, so YOLOSLIM_THREADS above the core count is cut to it, said.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for var in ("YOLOSLIM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if var == "OMP_NUM_THREADS" and value == os.environ.get(_OMP_MARK):
            continue
        if value.isascii() and value.isdigit() and int(value) > 0:
            if var == "YOLOSLIM_THREADS" and int(value) > cores:
                warnings.warn(f"{var}={value} is more than the {cores} cores here: using {cores}", stacklevel=2)
                return cores
            return int(value)
        if value and var == "YOLOSLIM_THREADS":
            warnings.warn(f"{var}={value!r} is not a whole number > 0 (e.g. 4): ignored", stacklevel=2)
    return cores


def _local_font(check_font: Callable[[str], Any]) -> Callable[[str], Any]:
    """Ultralytics' `check_font`, answered from installed fonts when the one it names is missing offline.

    Ultralytics downloads Arial.ttf (Latin labels) and Arial.Unicode.ttf (other scripts) into its config
    folder. Offline, a font Ultralytics finds itself (config folder, matplotlib's list) is used as is;
    otherwise the answer is an installed font under its own name, never a file written under Arial's:
    matplotlib's DejaVu Sans for Latin labels, and for other scripts an installed font that covers CJK
    (matplotlib's font manager finds it), else DejaVu Sans with one warning that such labels may show as boxes.
    """
    from ultralytics.utils import LOGGER, ONLINE, USER_CONFIG_DIR

    def check(font: str = "Arial.ttf") -> Any:
        from matplotlib import font_manager

        name = Path(font).name
        known = (USER_CONFIG_DIR / name).exists() or any(name in f.fname for f in font_manager.fontManager.ttflist)
        if ONLINE or known:
            return check_font(font)
        if name == "Arial.Unicode.ttf":
            if cjk := _cjk_font():
                return cjk
            if not check.warned:
                check.warned = True
                LOGGER.warning(
                    "yoloslim: offline and no installed font covers CJK: non-Latin class names may show as boxes "
                    "in plots (install one, e.g. the fonts-noto-cjk package, or put Arial.Unicode.ttf in "
                    f"{USER_CONFIG_DIR})"
                )
        return Path(font_manager.findfont("DejaVu Sans"))

    check.warned = False
    check.offline = True
    return check


def _remove_old_font_copies(config_dir: Path) -> None:
    """Delete the DejaVu Sans copies that yoloslim 0.1 wrote as Arial*.ttf into Ultralytics' config folder.

    Only byte-for-byte copies of matplotlib's DejaVuSans.ttf are removed: a real Arial stays.
    """
    from matplotlib import get_data_path

    dejavu = Path(get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        copy = config_dir / name
        try:
            if copy.stat().st_size == dejavu.stat().st_size and copy.read_bytes() == dejavu.read_bytes():
                copy.unlink()
        except OSError:
            continue


@functools.cache
def _cjk_font() -> Path | None:
    """An installed TrueType/OpenType font that has glyphs for Chinese, Japanese and Korean, if any."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    for entry in font_manager.fontManager.ttflist:
        if any(key in entry.name for key in ("CJK", "WenQuanYi", "Droid Sans Fallback", "Unifont", "Noto Sans SC")):
            try:
                charmap = FT2Font(entry.fname).get_charmap()
            except (OSError, RuntimeError):
                continue
            if all(ord(ch) in charmap for ch in "中日한"):
                return Path(entry.fname)
    return None


def _offline_amp_check(check_amp: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """Ultralytics' AMP check, with only its one-time download of yolo26n.pt taken out when offline.

    Ultralytics' own decision runs unchanged (CPU / MPS: no AMP; its list of GPUs where AMP breaks training,
    such as the GTX 16xx family: AMP off); only the step that would download yolo26n.pt, when that file is
    not there and the machine is offline, is answered with the ConnectionError Ultralytics itself handles
    ("checks skipped", AMP stays on), without touching the network.
    """
    import ultralytics
    from ultralytics.utils import ONLINE, WEIGHTS_DIR

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("offline: yolo26n.pt is not in the weights dir (yoloslim skipped its download)")

    def check(model: Any) -> bool:
        if ONLINE or (Path(WEIGHTS_DIR) / "yolo26n.pt").is_file():
            return check_amp(model)
        real = ultralytics.YOLO  # check_amp imports YOLO from the package when it gets that far
        ultralytics.YOLO = no_download
        try:
            return check_amp(model)
        finally:
            ultralytics.YOLO = real

    check.offline = True
    return check


def configure() -> int:
    """Apply the offline settings and the thread count; return the number of torch threads used."""
    threads = _user_threads()  # read before ultralytics sets OMP_NUM_THREADS=1 on import
    omp_unset = not os.environ.get("OMP_NUM_THREADS") and "ultralytics" not in sys.modules
    missing = [key for key in _ENV_DEFAULTS if key not in os.environ]
    for key in missing:
        os.environ[key] = _ENV_DEFAULTS[key]
    if "ultralytics" in sys.modules and "YOLO_OFFLINE" in missing:  # its online probe ran without our settings
        warnings.warn("import yoloslim before ultralytics so that its offline settings apply", stacklevel=3)
    from ultralytics.data import utils as data_utils
    from ultralytics.engine import trainer
    from ultralytics.utils import USER_CONFIG_DIR, checks, plotting, torch_utils

    if omp_unset and os.environ.get("OMP_NUM_THREADS"):
        os.environ[_OMP_MARK] = os.environ["OMP_NUM_THREADS"]

    # `select_device` calls torch.set_num_threads(NUM_THREADS) on CPU each time a trainer, validator or
    # predictor starts; this is the one value it reads.
    torch_utils.NUM_THREADS = threads
    if not getattr(trainer.check_amp, "offline", False):
        trainer.check_amp = _offline_amp_check(trainer.check_amp)  # the name BaseTrainer._setup_train calls
    _remove_old_font_copies(Path(USER_CONFIG_DIR))
    if not getattr(checks.check_font, "offline", False):
        font_check = _local_font(checks.check_font)
        for module in (checks, data_utils, plotting):  # every name Ultralytics calls it by
            module.check_font = font_check
    return threads


THREADS = configure()
