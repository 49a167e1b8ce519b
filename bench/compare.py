r"""Arms x seeds, one table: does the slimming path beat simply pruning the trained model, at equal compute?

Every arm starts from the same normal-trained checkpoint (`--normal`) and trains `--sparse-epochs` +
`--finetune-epochs` epochs in all (docs/RESULTS.md, "The protocol"):

- `continue`: the normal model trained on, unpruned, at the rate the other arms continue it (a tenth of
  Ultralytics' rate, warm-up from 0): the accuracy ceiling, arm (a);
- `prune-finetune`: the normal model pruned to the budget, then fine-tuned for all the epochs (arm (b));
  `continue` and `prune-finetune` also take an `epochs` setting (`d3=continue:epochs=3`), the ceiling and the cut
  alone for arms that train that many;
- `oneshot`: as `prune-finetune`, but the prune repairs the model from the training images first (least-squares
  reconstruction, `yoloslim prune --reconstruct`); its `epochs` setting fine-tunes fewer epochs
  (`os2=oneshot:epochs=2`), to measure how many a repaired model needs;
- `slim`: sparsity training to the budget, pruning to it (only zeros go), fine-tuning (arm (c));
- `slim-teacher`: `slim` whose fine-tuning also learns from the normal model (Ultralytics' distillation; its
  weight is the arm's `dis` setting, e.g. `t1=slim-teacher:dis=1`, else Ultralytics' default).

An arm may be named with settings of its own, `[NAME=]RECIPE[:key=value,...]` (the name defaults to the recipe),
e.g. `slim-gamma=slim:importance=gamma` or `slim-lr=slim:lr_scale=0.1`; they go to every stage of that arm (keys
`importance`, `streams`, `round_to`, `lr_scale` and `target`, e.g. `slim30=slim:target=0.3`, `min_keep` for the arms
that prune the normal model once (the per-layer floor of the prune, `--min-keep`), or any Ultralytics training
argument; `sr` replaces `--sr` for that arm). `sparse_target` lets a slim arm's sparse stage zero to another share
than it prunes to: `one=slim:sparse_target=0.3` prunes at `--target` a stage zeroed to 0.3x, as the pipeline's
`--one-sparse-stage` does for its larger targets. `--train-args` gives every arm the same ones
(`fraction=0.5 val=False`: half the training images, validation at the last epoch only). Each arm is scored by its
last epoch's model (`last.pt`, never a best-of), validated on `--data`. The table gives every score, mean +- sd, and
each arm's paired difference from `--reference` with a 95% t interval over seeds. Every setting is checked when the
arguments are read (budgets in (0, 1], whole epochs, training arguments as Ultralytics checks them), so a bad arm is
refused before the run folder records anything.

    python bench/compare.py --normal runs/hardhat/normal/weights/last.pt --data datasets/hardhat/hardhat.yaml \
        --imgsz 256 --target 0.4 --sparse-epochs 15 --finetune-epochs 5 --seeds 0 1 2 \
        --arms continue prune-finetune slim --run-dir runs/compare-hardhat --out docs/compare_hardhat.md

Finished runs are reused when the command is run again, and an interrupted stage resumes from its last epoch; a run
folder made with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yoloslim  # noqa: F401  (offline settings first)
from common import BATCH, emit, parser, paired_interval, shown, write_csv
from ultralytics.cfg import smart_value

from yoloslim import steps
from yoloslim.atomic import atomic_write_text
from yoloslim.checkpoint import readable
from yoloslim.reconstruct import Repair
from yoloslim.settings import RANKING, RANKING_FIELDS, SCRIPT_ROUND_TO, Ranking, check_min_keep, check_target_gflops
from yoloslim.trainer import CONTINUE_LR_SCALE

RECIPES = ("continue", "prune-finetune", "oneshot", "slim", "slim-teacher")
# arm settings that are not Ultralytics training arguments
NOT_TRAINING = ("importance", "streams", "min_keep", "target", "sparse_target", "epochs")


@dataclass(frozen=True)
class Arm:
    """A named recipe with settings of its own."""

    name: str
    recipe: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Arm:
        """`[NAME=]RECIPE[:key=value,...]` (the name defaults to the recipe), its settings checked as Ultralytics
        checks training arguments, so that a bad arm is refused before the run folder records anything."""
        head, _, pairs = text.partition(":")
        name, _, recipe = head.rpartition("=")
        name = name or recipe
        if recipe not in RECIPES:
            raise argparse.ArgumentTypeError(f"arm '{text}': the recipe must be one of {RECIPES}")
        settings = {}
        for pair in filter(None, pairs.split(",")):
            key, sep, value = pair.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"arm '{text}': settings are key=value pairs, e.g. slim:lr_scale=0.1")
            settings[key] = smart_value(value)
        if "epochs" in settings and recipe.startswith("slim"):
            raise argparse.ArgumentTypeError(
                f"arm '{text}': a slim arm trains --sparse-epochs + --finetune-epochs; epochs= is for the arms that "
                "train once (continue, prune-finetune, oneshot)"
            )
        if "min_keep" in settings and recipe not in ("prune-finetune", "oneshot"):
            raise argparse.ArgumentTypeError(
                f"arm '{text}': min_keep= is the floor of pruning the normal model once, for prune-finetune and "
                "oneshot arms (a slim arm prunes with the floor its sparse stage zeroed to; continue prunes nothing)"
            )
        try:
            check_arm_settings(settings)
        except (SyntaxError, TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"arm '{text}': {' '.join(str(e).split())}") from None
        return cls(name, recipe, settings)


def check_arm_settings(settings: dict[str, Any]) -> None:
    """Refuse an arm's setting that no stage would take: budgets outside (0, 1], fewer than one epoch, or a training
    argument Ultralytics does not know or cannot take (its own `get_cfg` checks, with yoloslim's arguments)."""
    for key in ("target", "sparse_target"):
        if key in settings and not check_target_gflops(settings[key]):
            raise ValueError(f"{key}=0 prunes nothing: give the share of the GFLOPs to keep, in (0, 1]")
    if "min_keep" in settings:
        check_min_keep(settings["min_keep"])
    if "epochs" in settings and not (isinstance(settings["epochs"], int) and settings["epochs"] >= 1):
        raise ValueError(f"epochs={settings['epochs']!r} must be a whole number of at least 1")
    steps.check_training_args({k: v for k, v in settings.items() if k not in NOT_TRAINING})


def budget(text: str) -> float:
    """A GFLOPs share in (0, 1], for argparse."""
    try:
        check_arm_settings({"target": smart_value(text)})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return float(text)


class Comparison:
    """Runs (or reuses) every arm's stages for one seed at a time and scores them."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a

    def train(self, weights: Path, folder: Path, name: str, epochs: int, seed: int, **args: Any) -> Path:
        """One training stage; its last.pt. A finished run is reused as it is, an interrupted one resumed from its
        last epoch (steps.train's resume), so a session that ends mid-stage loses at most an epoch."""
        last = folder / name / "weights" / "last.pt"
        if not steps.finished_run(folder, name):
            steps.train(
                weights,
                data=self.a.data,
                epochs=epochs,
                imgsz=self.a.imgsz,
                batch=BATCH,
                project=folder,
                name=name,
                seed=seed,
                nbs=BATCH,
                resume=True,
                **args,
            )
        return last

    def prune(self, weights: Path, folder: Path, settings: dict[str, Any], repair: bool = False) -> Path:
        """The pruned model of an arm (made once): cut to the budget, repaired from the training images if `repair`."""
        out = folder / "prune" / "pruned.pt"
        if not readable(out):
            given = {k: settings[k] for k in RANKING_FIELDS if k in settings}
            ranking = Ranking.of({"round_to": SCRIPT_ROUND_TO, **given})
            target = ("gflops", settings.get("target", self.a.target))
            steps.prune(
                weights,
                ratio=None,
                save_dir=out.parent,
                target=target,
                data=self.a.data if repair else None,
                validate_pruned=False,
                how=Repair(reconstruct=True, bn=False),
                ranking=ranking,
            )
        return out

    def run(self, arm: Arm, seed: int) -> Path:
        """The final model of `arm` for `seed`."""
        a, s = self.a, {**self.a.train_args, **arm.settings}
        folder = a.run_dir / arm.name / f"seed{seed}"
        train_args = {k: v for k, v in s.items() if k not in NOT_TRAINING}
        total = a.sparse_epochs + a.finetune_epochs
        if arm.recipe == "continue":  # continued as the other arms continue it: a tenth of the rate, warm-up from 0
            continued = {"lr_scale": CONTINUE_LR_SCALE, "warmup_bias_lr": 0.0, **train_args}
            return self.train(a.normal, folder, "continue", s.get("epochs", total), seed, **continued)
        if arm.recipe in ("prune-finetune", "oneshot"):
            pruned = self.prune(a.normal, folder, s, repair=arm.recipe == "oneshot")
            epochs = s.get("epochs", total)
            return self.train(pruned, folder, "finetune", epochs, seed, finetune=True, **train_args)
        ranking = {"round_to": SCRIPT_ROUND_TO, **{k: s[k] for k in RANKING if k in s}}
        sparse = self.train(
            a.normal,
            folder,
            "sparse",
            a.sparse_epochs,
            seed,
            **{
                "sr": a.sr,
                "target_gflops": s.get("sparse_target", s.get("target", a.target)),
                **train_args,
                **ranking,
            },
        )
        teacher = {"distill_model": str(a.normal)} if arm.recipe == "slim-teacher" else {}
        return self.train(
            self.prune(sparse, folder, s),
            folder,
            "finetune",
            a.finetune_epochs,
            seed,
            finetune=True,
            **train_args,
            **teacher,
        )

    def score(self, weights: Path, name: str) -> float:
        return steps.validate(weights, data=self.a.data, imgsz=self.a.imgsz, project=self.a.run_dir / "val", name=name)[
            "map50_95"
        ]


def check_settings(a: argparse.Namespace) -> None:
    """Refuse a run folder made with other settings (its finished runs would not be what is asked), or holding an
    arm of the same name with another recipe; record them. More seeds or more arms reuse the folder."""
    asked = {k: str(v) for k, v in vars(a).items() if k not in ("seeds", "arms", "out", "reference", "run_dir")}
    arms = {arm.name: [arm.recipe, arm.settings] for arm in a.arms}
    record = a.run_dir / "compare.json"
    if record.is_file():
        made = json.loads(record.read_text())
        changed = sorted(k for k in asked if made["settings"].get(k) != asked[k])
        changed += [f"arm {n}" for n in arms if n in made["arms"] and made["arms"][n] != arms[n]]
        if changed:
            raise SystemExit(f"{a.run_dir} was made with other settings ({', '.join(changed)}): use another --run-dir")
        arms = {**made["arms"], **arms}
    a.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps({"settings": asked, "arms": arms}, indent=1) + "\n")


def table(arms: list[Arm], seeds: list[int], scores: dict[str, list[float]], reference: str) -> tuple[list, list]:
    """The table's columns and rows: every score, mean +- sd, paired difference from the reference with its interval."""
    columns = ["arm", *(f"seed {s}" for s in seeds), "mean +- sd", f"vs {reference} (pt), 95% interval"]
    rows = []
    for arm in arms:
        values = scores[arm.name]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        mean, lo, hi = paired_interval([x - r for x, r in zip(values, scores[reference], strict=True)])
        interval = f"[{100 * lo:+.2f}, {100 * hi:+.2f}]" if len(values) > 1 else "(one seed: no interval)"
        diff = "-" if arm.name == reference else f"{100 * mean:+.2f} {interval}"
        rows.append([arm.name, *(f"{v:.4f}" for v in values), f"{statistics.mean(values):.4f} +- {sd:.4f}", diff])
    return columns, rows


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = parser(__doc__, data=True, imgsz=256, run_dir="runs/compare", beside="a CSV of every score")
    p.add_argument("--normal", type=Path, required=True, help="the normal-trained checkpoint every arm starts from")
    p.add_argument("--target", type=budget, default=0.4, help="GFLOPs share the pruned arms keep")
    p.add_argument("--sr", type=float, default=1e-2)
    p.add_argument("--sparse-epochs", type=int, default=15)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--arms", type=Arm.parse, nargs="+", default=[Arm.parse(r) for r in RECIPES[:3]])
    p.add_argument("--reference", default="continue", help="the arm the others are compared with")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--train-args",
        type=lambda item: Arm.parse(f"x=continue:{item}").settings,
        nargs="*",
        default=[],
        help="KEY=VALUE Ultralytics training arguments for every arm, e.g. fraction=0.5 val=False (an arm's own win)",
    )
    a = p.parse_args(argv)
    if twice := sorted({arm.name for arm in a.arms if [b.name for b in a.arms].count(arm.name) > 1}):
        p.error(f"arm name(s) {twice} given twice: name each arm (NAME=RECIPE:...), they share a run folder")
    if a.reference not in {arm.name for arm in a.arms}:
        p.error(f"--reference '{a.reference}' is not one of the arms")
    if not a.normal.is_file():
        p.error(f"--normal '{a.normal}' is not a file: give the normal-trained checkpoint (.pt) every arm starts from")
    if a.data != "demo" and not Path(a.data).is_file():
        p.error(f"--data '{a.data}' is not a file: give the dataset yaml (or demo)")
    a.normal = a.normal.resolve()
    a.train_args = {k: v for item in a.train_args for k, v in item.items()}
    check_settings(a)
    comparison = Comparison(a)
    scores: dict[str, list[float]] = {}
    for seed in a.seeds:  # seed by seed: a stopped run has whole seeds to show
        for arm in a.arms:
            scores.setdefault(arm.name, []).append(
                comparison.score(comparison.run(arm, seed), f"{arm.name}-seed{seed}")
            )
    columns, rows = table(a.arms, a.seeds, scores, a.reference)
    own = ", ".join(f"{arm.name} at {arm.settings['target']:g}x" for arm in a.arms if "target" in arm.settings)
    fewer = ", ".join(f"{arm.name} {arm.settings['epochs']}" for arm in a.arms if "epochs" in arm.settings)
    caption = (
        f"mAP50-95 (last epoch) on {a.data} at imgsz {a.imgsz}, from {shown(a.normal)}: {a.sparse_epochs} + "
        f"{a.finetune_epochs} epochs in every arm{f' but those that set theirs ({fewer})' if fewer else ''}, pruned "
        f"arms at {a.target:g}x GFLOPs{f' ({own})' if own else ''}; seeds {a.seeds}"
    )
    emit(caption, columns, rows, a.out)
    if a.out:
        records = [[arm.name, seed, f"{v:.5f}"] for arm in a.arms for seed, v in zip(a.seeds, scores[arm.name])]
        write_csv(a.out.with_suffix(".csv"), ["arm", "seed", "map50_95"], records)
    return scores


if __name__ == "__main__":
    main()
