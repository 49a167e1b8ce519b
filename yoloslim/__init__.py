"""yoloslim: network slimming for Ultralytics YOLO detectors and their segment, pose and OBB variants (Liu et al. 2017, arXiv:1708.06519)."""

from yoloslim import runtime  # noqa: F401  (must run before ultralytics is imported)
from yoloslim.channels import ChannelGraph, UnsupportedModuleError, build_graph, prunable_bn_names
from yoloslim.model import YOLO
from yoloslim.cost import CostModel, Unit, prunable_units
from yoloslim.importance import REGISTRY, Source, cost_weighted, gamma_importance, make_importance
from yoloslim.prune import Pruner, PrunePlan, prune_model
from yoloslim.settings import Ranking, SparsityTarget
from yoloslim.taylor import TaylorImportance, estimate_taylor
from yoloslim.trainer import TRAINERS, SlimMixin, SlimTrainer
from yoloslim import steps  # noqa: E402  (the workflow steps, after the classes they use)

__all__ = [
    "YOLO",
    "ChannelGraph",
    "CostModel",
    "REGISTRY",
    "Source",
    "Pruner",
    "PrunePlan",
    "Ranking",
    "SlimMixin",
    "SlimTrainer",
    "SparsityTarget",
    "TRAINERS",
    "TaylorImportance",
    "Unit",
    "UnsupportedModuleError",
    "build_graph",
    "cost_weighted",
    "estimate_taylor",
    "gamma_importance",
    "make_importance",
    "prunable_bn_names",
    "prunable_units",
    "prune_model",
    "steps",
]
