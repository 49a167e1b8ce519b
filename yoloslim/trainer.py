"""`SlimTrainer` (and its segment, pose and OBB siblings): Ultralytics' trainers with sparsity training and
pruned-model fine-tuning, the hooks living in one mixin (`SlimMixin`).

Ultralytics hooks are overridden, nothing is copied from Ultralytics:

- `optimizer_step` adds the L1 sub-gradient `sr_t * images / 16 * sign(gamma)` to the prunable gammas once per
  step. It is added to the still-scaled gradient as `scale * ...`, so `scaler.unscale_` turns it into exactly
  that before Ultralytics clips the gradients: AMP and clipping stay on. With a `sparsity` or `target_gflops` target it then
  fades the chosen channels to exact zero in the model and its EMA and holds them there (`target.py`).
- `preprocess_batch` counts the images each step applies (the L1 term is per image) and the progress.
- `get_model` trains a pruned model object as it is (the stock trainer would rebuild the full-width
  network from `model.yaml` and silently drop the pruning). Resume reaches the same path; Ultralytics'
  DDP workers receive the trainer's model object itself (8.4 pickles it), which keeps its pruned shapes.
- `build_optimizer` scales Ultralytics' learning rate by `lr_scale` (default: 0.1 for a stage that continues a
  trained .pt, 1 otherwise).
- `save_metrics` adds the sparsity columns to `results.csv`; an `on_train_end` callback reports the target.
- `save_model` also writes the zeroing's state beside last.pt, and `resume_training` reads it back, so a resumed
  sparse run goes on with the same chosen channels, fades and Taylor averages.

Fine-tuning can learn from a teacher (the normal-trained model) through Ultralytics' own knowledge distillation
(`distill_model`, weight `dis`): Ultralytics wraps the model in its `DistillationModel` after `get_model`, so the
hooks read the pruned model as its `student_model`; `check_slim_args` refuses a missing teacher before any work.

The `SLIM_ARGS` (`sr`, the targets `sparsity` or `target_gflops`, the ranking `importance` and `streams` that
the zeroing shares with `prune`, then `finetune` and `lr_scale`) are registered as real Ultralytics arguments on import,
so they pass Ultralytics' argument check, are saved in `args.yaml` and checkpoints, and survive `resume` and
the DDP launcher (which pickles the trainer class and `vars(args)`; its workers import this module again).
A stock Ultralytics trainer refuses them (a default `on_pretrain_routine_start` callback) instead of
silently ignoring them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT, LOGGER, RANK, YAML, colorstr
from ultralytics.utils.callbacks.base import default_callbacks
from ultralytics.utils.torch_utils import unwrap_model

from yoloslim.atomic import atomic_write_bytes
from yoloslim.channels import UnsupportedModuleError
from yoloslim.checkpoint import PRUNED_KEY, pruned_info, student
from yoloslim.importance import gamma_importance, learns_from_gradients
from yoloslim.sparsity import IMAGES_PER_SR, add_l1_subgradient, gamma_stats, prunable_gammas, sr_at, sr_for_images
from yoloslim.prune import Pruner
from yoloslim.settings import RANKING, SLIM_ARGS, Ranking, SparsityTarget, check_value, read
from yoloslim.target import ChannelZeroing

# The learning-rate factor of a stage that continues a trained model (sparsity training, fine-tuning): Ultralytics
# restarts at its full rate, made for training from scratch, which knocks a converged model out of its basin before
# any channel is zeroed (docs/DESIGN.md, "Learning rate").
CONTINUE_LR_SCALE = 0.1
ZEROING_STATE = "zeroing.pt"  # beside last.pt: the state of a sparsity target's zeroing, for resume


def register_args() -> None:
    """Make the `SLIM_ARGS` known to Ultralytics' default config (idempotent)."""
    for key, value in SLIM_ARGS.items():
        DEFAULT_CFG_DICT.setdefault(key, value)
        if not hasattr(DEFAULT_CFG, key):
            setattr(DEFAULT_CFG, key, value)


def refuse_slim_args_in_stock_trainer(trainer: Any) -> None:
    """`on_pretrain_routine_start` of every Ultralytics trainer: a stock trainer would silently ignore
    the `SLIM_ARGS` (registered process-wide above), so it refuses them instead."""
    if isinstance(trainer, SlimMixin):
        return
    if used := [k for k, default in SLIM_ARGS.items() if getattr(trainer.args, k, default) not in (default, None)]:
        raise ValueError(
            f"{', '.join(used)} would be ignored by Ultralytics' own {type(trainer).__name__}: train with yoloslim's "
            "YOLO (from yoloslim import YOLO), which applies them to detect, segment, pose and OBB models"
        )


def report_target(trainer: Any) -> None:
    """`on_train_end` of a slimming trainer: report the sparsity target."""
    trainer.report_target()


register_args()
if refuse_slim_args_in_stock_trainer.__name__ not in {
    f.__name__ for f in default_callbacks["on_pretrain_routine_start"]
}:
    default_callbacks["on_pretrain_routine_start"].append(refuse_slim_args_in_stock_trainer)


def _reader(args: dict[str, Any] | Any) -> Callable[[str], Any]:
    """`get(key)` for training arguments given as a dict or a namespace; a missing key reads its `SLIM_ARGS` default."""
    return lambda key: read(args, key, SLIM_ARGS[key])


def check_slim_args(args: dict[str, Any] | Any) -> tuple[Ranking, SparsityTarget | None]:
    """Validate the `SLIM_ARGS` (a dict or namespace) before any training starts, each by its check in
    `settings.py` (the ranking's by making its `Ranking`), then how they go together; normalise the numbers. A
    teacher (`distill_model`) among the arguments is checked too. The ranking and the sparsity target (or None),
    made once here for the stage to pass down."""
    get = _reader(args)
    ranking = Ranking.of({key: get(key) for key in RANKING})
    value = {key: check_value(key, get(key)) for key in SLIM_ARGS if key not in RANKING}
    sparsity, gflops = value["sparsity"], value["target_gflops"]
    if sparsity and gflops:
        raise ValueError(
            f"sparsity={sparsity:g} and target_gflops={gflops:g}: give one target (a share of channels, or of GFLOPs)"
        )
    if (sparsity or gflops) and value["finetune"]:
        raise ValueError(
            "a sparsity target and finetune=True do not go together: sparsity training comes before pruning, "
            "fine-tuning after"
        )
    for key in ("sr", "sparsity", "target_gflops", "lr_scale"):
        if isinstance(args, dict):
            args[key] = value[key]
        else:
            setattr(args, key, value[key])
    _check_teacher(args)
    return ranking, SparsityTarget.of(value)


def _check_teacher(args: dict[str, Any] | Any) -> None:
    """`distill_model` (the teacher of Ultralytics' distillation) must be an existing .pt checkpoint, and is for
    training without sparsity: Ultralytics would try to download a missing name, and the sparsity hooks act on
    the model, not on its distillation wrapper."""
    teacher = read(args, "distill_model")
    if not teacher:
        return
    if Path(teacher).suffix != ".pt" or not Path(teacher).is_file():
        raise FileNotFoundError(
            f"teacher (distill_model) '{teacher}' is not an existing .pt checkpoint: pass the normal-trained "
            "model's weights, e.g. runs/yoloslim/normal/weights/best.pt"
        )
    get = _reader(args)
    if float(get("sr")) > 0 or has_target(args):
        raise ValueError(
            "a teacher (distill_model) is for fine-tuning the pruned model (or normal training), not for sparsity "
            "training: drop sr and the sparsity target, or the teacher"
        )


def has_target(args: dict[str, Any] | Any) -> bool:
    """Whether the training arguments set a sparsity target (`sparsity` or `target_gflops`)."""
    get = _reader(args)
    return bool(get("target_gflops") or get("sparsity"))


def continues_model(args: dict[str, Any] | Any) -> bool:
    """Whether the training arguments continue a trained checkpoint (`model` a .pt) with sparsity training or
    fine-tuning: the stages that start from a model already trained on the user's data."""
    get = _reader(args)
    model = read(args, "model")
    return str(model or "").endswith(".pt") and (float(get("sr")) > 0 or has_target(args) or get("finetune"))


def stage_lr_scale(args: dict[str, Any] | Any) -> float:
    """`lr_scale` as given, else `CONTINUE_LR_SCALE` for a stage that continues a trained model and 1 otherwise."""
    given = _reader(args)("lr_scale")
    if given is not None:
        return float(given)
    return CONTINUE_LR_SCALE if continues_model(args) else 1.0


def refuse_sparsity_on_pruned(model: nn.Module, target: SparsityTarget | None) -> None:
    """A sparsity target is for the unpruned model: its zeros are what one later prune removes."""
    if target and pruned_info(model) is not None:
        raise ValueError(
            "sparsity on an already pruned model: sparsity-train the unpruned model and prune it once at the "
            "target, or fine-tune this one (without sparsity)"
        )


def read_zeroing_state(path: Path) -> dict[str, Any] | None:
    """A run's saved zeroing state, read as data (`weights_only=True`: tensors, dicts and numbers; a pickle that
    would run code is refused); None, with a one-line warning, for a file that is damaged or not that data."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file raises EOFError, RuntimeError, UnpicklingError, ...
        LOGGER.warning(f"{colorstr('yoloslim:')} {path} cannot be read as data ({type(e).__name__}): ignored")
        return None
    return saved if isinstance(saved, dict) else None


class SlimMixin:
    """The network-slimming hooks for any Ultralytics detection-family trainer: the L1 penalty (`sr`), a
    sparsity target (`sparsity` / `target_gflops`) and pruned-model fine-tuning (`finetune`). Mixed in before
    the task's trainer (`class T(SlimMixin, SegmentationTrainer)`), so `super()` reaches the task's own steps.

    Args:
        cfg, overrides, _callbacks: as Ultralytics' trainers take them; `overrides` may hold the `SLIM_ARGS`.

    Raises:
        ValueError: a bad slimming argument, at construction (before Ultralytics makes the run folder where it can).

    Example:
        >>> trainer = SlimTrainer(overrides={"model": "yolov8n.yaml", "data": "data.yaml", "sr": 1e-2, "sparsity": 0.5})
        >>> trainer.train()
    """

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Validate the slimming arguments first, then set up as Ultralytics does."""
        check_slim_args(dict(overrides or {}))  # a copy: resume compares the caller's overrides with the checkpoint
        self._given = set(overrides or {})  # what the caller set, so the stage's defaults never override it
        super().__init__(cfg, overrides, _callbacks)
        self.ranking, self.target = check_slim_args(self.args)  # resume replaces args with the checkpoint's
        self._gammas: list[nn.Parameter] | None = None
        self.zeroing: ChannelZeroing | None = None
        self._images = 0  # images whose loss gradient the next optimizer step applies
        self._batches = (0, 0)  # (epoch, micro-batches seen in it), for the schedule's progress
        if report_target not in self.callbacks["on_train_end"]:  # DDP workers receive the callbacks pickled
            self.add_callback("on_train_end", report_target)

    def get_model(self, cfg=None, weights: nn.Module | None = None, verbose: bool = True):
        """Train a pruned model as it is; build everything else the Ultralytics way."""
        pruned = weights is not None and pruned_info(weights) is not None
        if weights is None and isinstance(cfg, dict) and PRUNED_KEY in cfg:
            raise ValueError(
                "a pruned model cannot be trained from scratch (pretrained=False): its yaml describes the "
                "full-width network; fine-tune the pruned weights instead"
            )
        if self.args.finetune and weights is None:
            raise ValueError(
                "finetune=True needs a pruned checkpoint as the model (e.g. YOLO('pruned.pt')), not a model yaml"
            )
        if weights is not None:
            refuse_sparsity_on_pruned(weights, self.target)
            self._refuse_sparsity_on_other_classes(weights)
        if pruned or self.args.finetune:
            model = self._pruned_model(weights, pruned, verbose)
        else:
            model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        if self.args.sr > 0 or self.target:  # an unsupported model or target fails here, before training
            self._gammas = prunable_gammas(model, self.ranking.streams)
        self.zeroing = self.channel_zeroing(model)
        return model

    def channel_zeroing(self, model: nn.Module) -> ChannelZeroing | None:
        """The zeroing of the sparsity target, ranked as `prune` will rank, or None (a gradient criterion is fed with
        each step's gradients in `optimizer_step`)."""
        return None if self.target is None else ChannelZeroing(model, self.target, self.ranking)

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer (its `auto` choice included), every group's learning rate times `lr_scale` (given,
        else `CONTINUE_LR_SCALE` for a stage that continues a trained model).

        Set before Ultralytics builds its scheduler, so the warm-up and the decay start from the scaled rate.
        """
        self._resolve_stage_defaults()
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if (scale := self.args.lr_scale) != 1:
            for group in optimizer.param_groups:
                group["lr"] *= scale
            LOGGER.info(f"{colorstr('yoloslim:')} learning rate x{scale:g} (lr_scale)")
        return optimizer

    def _resolve_stage_defaults(self) -> None:
        """Fix the defaults of a stage once the model is known (a pruned .pt turns fine-tuning on): `lr_scale`, and
        for a stage that continues a trained model, a warm-up whose every rate starts at 0 (`warmup_bias_lr=0`;
        Ultralytics' `auto` optimizer does so itself when it picks AdamW; an explicit optimizer would start the biases
        at 0.1, made for training from scratch). Stored in the arguments, so checkpoints and `resume` keep them."""
        if self.args.lr_scale is None:  # else given, or fixed before this resume
            self.args.lr_scale = stage_lr_scale(self.args)
            if continues_model(self.args) and "warmup_bias_lr" not in self._given:
                self.args.warmup_bias_lr = 0.0
        if RANK in {-1, 0}:  # Ultralytics wrote args.yaml before the model was known: record what happens
            YAML.save(self.save_dir / "args.yaml", vars(self.args))

    def validate(self):
        """Ultralytics' validation; while a sparsity target's zeroing is unfinished, no epoch becomes best.pt.

        best.pt is what users prune: one saved before the target was reached would still hold live channels
        among those the target zeroes.
        """
        if self.zeroing is None or self.zeroing.finished:
            return super().validate()
        best = self.best_fitness
        metrics, fitness = super().validate()
        self.best_fitness = best
        return metrics, fitness

    def _refuse_sparsity_on_other_classes(self, weights: nn.Module) -> None:
        """Sparsity training continues a model trained on its dataset, at the continuing rate (`lr_scale`): with
        other classes Ultralytics would rebuild the head and train it, new, at that tenth of the rate."""
        if (self.args.sr > 0 or self.target) and (nc := weights.model[-1].nc) != self.data["nc"]:
            raise ValueError(
                f"the model predicts {nc} classes but dataset '{self.args.data}' has {self.data['nc']}: sparsity "
                "training continues a model trained on its dataset; train it on this one first (yoloslim train)"
            )

    def _pruned_model(self, weights: nn.Module, pruned: bool, verbose: bool) -> nn.Module:
        """The pruned model object itself, made trainable (the yaml would rebuild it at full width)."""
        if (nc := weights.model[-1].nc) != self.data["nc"]:
            raise ValueError(
                f"the pruned model predicts {nc} classes but dataset '{self.args.data}' has {self.data['nc']}: "
                "fine-tune on a dataset with the same classes (prune a model trained on this dataset)"
            )
        if pruned and not self.args.finetune:
            LOGGER.info(f"{colorstr('yoloslim:')} the model is pruned, so it is fine-tuned as it is (finetune=True)")
            self.args.finetune = True  # args.yaml is written again once the stage's defaults are fixed
        if not pruned:
            LOGGER.warning(
                f"{colorstr('yoloslim:')} finetune=True on a model that yoloslim has not pruned: it trains at full "
                "width, at the fine-tuning rate (prune it first: yoloslim prune)"
            )
        for p in weights.parameters():
            p.requires_grad_(True)
        if verbose:
            weights.info()
        return weights

    def preprocess_batch(self, batch: dict) -> dict:
        """Count the images of each micro-batch (the L1 term is per image) and the schedule's progress."""
        self._images += batch["img"].shape[0]
        epoch, seen = self._batches
        self._batches = (self.epoch, seen + 1 if epoch == self.epoch else 1)
        return super().preprocess_batch(batch)

    def progress(self) -> float:
        """How far training is, from 0 to 1, counted in micro-batches."""
        epoch, seen = self._batches
        return min((epoch + seen / max(len(self.train_loader), 1)) / max(self.epochs, 1), 1.0)

    def optimizer_step(self) -> None:
        """Add the L1 sub-gradient on prunable gammas, step as Ultralytics does (unscale, clip, step, EMA), then
        fade the chosen channels of a sparsity target to zero in the model and its EMA. Taylor scores are fed
        from the loss's gradients first (before the L1 term), while channels are still being chosen."""
        sr = sr_for_images(sr_at(self.args.sr, self.epoch, self.epochs), self._images * max(self.world_size, 1))
        self._images = 0
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        if self.zeroing is None:  # DDP workers get the model object, not get_model
            self.zeroing = self.channel_zeroing(unwrap_model(self.model))
        z = self.zeroing
        if z is not None and z.amount < z.final and learns_from_gradients(z.importance):
            z.importance.accumulate(z.pruner.modules, z.pruner.units, scale)  # the loss's gradients only
        if sr > 0:
            if not add_l1_subgradient(self.prunable_gammas(), sr * scale):
                raise RuntimeError(
                    "sparsity training reached none of the prunable gammas (none has a gradient): the model's "
                    "parameters were replaced or frozen after setup, so this would train as a normal run"
                )
        if self.zeroing is not None:
            self.zeroing.clear_grads()
        super().optimizer_step()
        if self.zeroing is not None:
            self.zeroing.update(self.progress(), [unwrap_model(self.model), *([self.ema.ema] if self.ema else [])])

    def save_model(self):
        """Ultralytics' checkpoints, then the zeroing's state beside them (`zeroing.pt`, tagged with the epoch of
        last.pt), so that a resumed run goes on with the same chosen channels, fades and Taylor averages."""
        saved = super().save_model()
        if saved is not False and self.zeroing is not None and RANK in {-1, 0}:
            buffer = io.BytesIO()
            torch.save({"epoch": self.epoch, "state": self.zeroing.state_dict()}, buffer)
            atomic_write_bytes(self.wdir / ZEROING_STATE, buffer.getvalue())
        return saved

    def resume_training(self, ckpt) -> None:
        """Ultralytics' resume, then the zeroing's saved state where it belongs to the checkpoint resumed."""
        super().resume_training(ckpt)
        if ckpt is None or not self.resume or self.zeroing is None:
            return
        path = self.wdir / ZEROING_STATE
        saved = read_zeroing_state(path)
        if saved is not None and saved.get("epoch") == ckpt.get("epoch"):
            try:
                self.zeroing.load_state_dict(saved["state"])
                LOGGER.info(f"{colorstr('yoloslim:')} resumed the zeroing at {self.zeroing.amount:.1%} ({path.name})")
                return
            except (KeyError, TypeError, ValueError) as e:
                LOGGER.warning(f"{colorstr('yoloslim:')} {path} is not this run's zeroing ({e})")
                self.zeroing = self.channel_zeroing(unwrap_model(self.model))
        else:
            LOGGER.warning(
                f"{colorstr('yoloslim:')} no zeroing state of epoch {ckpt.get('epoch', -1) + 1} beside {self.last}: "
                "the channels it had chosen are chosen again from fresh scores (exact zeros rank lowest)"
            )

    def prunable_gammas(self) -> list[nn.Parameter]:
        """The prunable gammas of the model being trained, found once from the channel graph.

        Empty for a model the channel graph does not support, which only normal training (sr=0) reaches.
        """
        if self._gammas is None:
            try:
                self._gammas = prunable_gammas(student(unwrap_model(self.model)), self.ranking.streams)
            except UnsupportedModuleError:
                if self.args.sr > 0 or self.target:
                    raise
                self._gammas = []
        return self._gammas

    def save_metrics(self, metrics: dict) -> None:
        """Add how sparse the prunable gammas are to each epoch's results row, and log it."""
        if not self.prunable_gammas():
            return super().save_metrics(metrics)
        stats = gamma_stats(self.prunable_gammas())
        stats["sparsity/sr"] = sr_at(self.args.sr, self.epoch, self.epochs)
        text = (
            f"{stats['sparsity/share_lt_0.01']:.1%} of {sum(g.numel() for g in self._gammas)} prunable gammas < 0.01, "
            f"median |gamma| {stats['sparsity/median_gamma']:.4f}, sr {stats['sparsity/sr']:.2e} per {IMAGES_PER_SR} images"
        )
        if self.zeroing is not None:
            z = self.zeroing
            stats["sparsity/target_now"] = z.amount
            what = "of prunable channels" if z.kind == "channels" else f"of the {z.kind}"
            text += f", zeroed {z.amount:.1%} {what} (target {z.final:.1%})"
        LOGGER.info(f"{colorstr('sparsity:')} {text}")
        super().save_metrics({**metrics, **stats})

    def report_target(self) -> None:
        """At the end of training, say whether the sparsity target was reached, with what was reached."""
        if self.target is None or not self.prunable_gammas():
            return
        model = self.ema.ema if self.ema else unwrap_model(self.model)
        kind, value = self.target.kind, self.target.value
        if kind == "channels":
            reached = gamma_stats(prunable_gammas(model, self.ranking.streams))["sparsity/share_lt_0.01"]
            ok, text = reached + 1e-9 >= value, f"{reached:.1%} of prunable gammas < 0.01 (target {value:.1%})"
            hint = f"prune at ratio {value:g}"
        else:
            pruner = Pruner(model, self.ranking, gamma_importance)  # alive = |gamma| >= 0.01, whatever the ranking
            reached = pruner.live_cost_share(kind)
            ok, text = (
                reached <= value + 1e-6,
                f"the channels with gamma >= 0.01 keep {reached:.3f} of the {kind} (target {value:g})",
            )
            hint = f"prune with --target-{kind} {value:g}"
        if ok:
            LOGGER.info(f"{colorstr('sparsity:')} target reached: {text}; {hint} to remove only zeros")
        else:
            LOGGER.warning(
                f"{colorstr('sparsity:')} target NOT reached: {text} (the run stopped before the end of its schedule?)"
            )


class SlimTrainer(SlimMixin, DetectionTrainer):
    """Detection training with the slimming hooks."""


class SlimSegmentationTrainer(SlimMixin, SegmentationTrainer):
    """Instance-segmentation training with the slimming hooks."""


class SlimPoseTrainer(SlimMixin, PoseTrainer):
    """Pose training with the slimming hooks."""


class SlimOBBTrainer(SlimMixin, OBBTrainer):
    """Oriented-box training with the slimming hooks."""


TRAINERS: dict[str, type] = {
    "detect": SlimTrainer,
    "segment": SlimSegmentationTrainer,
    "pose": SlimPoseTrainer,
    "obb": SlimOBBTrainer,
}
