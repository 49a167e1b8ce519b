"""yoloslim: network slimming for Ultralytics YOLOv8 detectors (Liu et al. 2017, arXiv:1708.06519)."""

from yoloslim import runtime  # noqa: F401  (must run before ultralytics is imported)
from yoloslim.channels import ChannelGraph, UnsupportedModuleError, build_graph, prunable_bn_names
from yoloslim.model import YOLO
from yoloslim.prune import Pruner, PrunePlan, gamma_importance, prune_model
from yoloslim.trainer import SlimTrainer

__all__ = [
    "YOLO",
    "ChannelGraph",
    "Pruner",
    "PrunePlan",
    "SlimTrainer",
    "UnsupportedModuleError",
    "build_graph",
    "gamma_importance",
    "prunable_bn_names",
    "prune_model",
]
