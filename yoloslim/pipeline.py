"""The whole network-slimming sequence in one resumable command, ending in one results table.

normal training -> sparsity training -> gamma histograms -> prune at each ratio (or each GFLOPs target) ->
fine-tune each (optionally learning from the normal-trained model as a teacher) -> validate (before and after
fine-tuning) -> export ONNX -> onnxruntime latency, side by side -> table (Markdown and CSV) and plots. Plus two
comparisons at one of them: pruning the normally trained model instead of the sparse one, and folding `act(beta)`
off.

With `targets`, one number drives both stages: each target gets its own sparse stage, which zeroes channels
until the live ones keep that share of the GFLOPs (`target_gflops`), and its row prunes exactly those zeros,
as a user asking for that one budget would (`one_sparse_stage`: one stage zeroing to the smallest target
serves every row, cheaper, but the larger targets then start from a model sparser than they need).

`path` picks how each row gets there. `slim` is the sequence above. `oneshot` skips the sparse stage: the
normal-trained model is pruned to the row's budget, repaired from the training images (`reconstruct.py`) and
fine-tuned: for `epochs_finetune` epochs at targets of at least `ONESHOT_SHORT_FROM` of the GFLOPs, and below it for
as many epochs as the slim path trains (`epochs_sparse + epochs_finetune`), as it was measured. `auto` takes the
one-shot path for targets of at least `ONESHOT_FROM`, where at equal epochs it kept up with slimming or beat it
(in half the wall time where that was timed), and slims below, where it has not been measured (docs/DESIGN.md,
"Which path, by budget"). Ratios say nothing about compute, so `auto` slims them.

Every stage writes its artefacts into the run folder and is skipped when they already exist, so an
interrupted pipeline picks up where it stopped when the same command is run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, make_dataclass, replace
from pathlib import Path
from typing import Any

from yoloslim import steps
from yoloslim.atomic import atomic_write_csv, atomic_write_text, check_output_folder, removed_unless_started
from yoloslim.report import DEPLOY_FIELDS, deploy_markdown, results_markdown, results_plot
from yoloslim.settings import (
    LATER_SETTINGS,
    ONESHOT_FROM,
    ONESHOT_SHORT_FROM,
    RANKING,
    Ranking,
    RESERVED,
    STAGE_SETTINGS,
    check_values,
    pipeline_fields,
)


class _PipelineRules:
    """What the pipeline's config does with its settings; the fields themselves come from `settings.py`."""

    def __post_init__(self) -> None:
        """Lists (as the command line gives them) become tuples, and `KEY=VALUE` items of train_args one dict."""
        for name in ("ratios", "targets", "deploy"):
            setattr(self, name, tuple(getattr(self, name)))
        items = self.train_args if isinstance(self.train_args, list) else [self.train_args]
        self.train_args = {k: v for item in items for k, v in item.items()}  # the config's own dict

    @property
    def points(self) -> tuple[float, ...]:
        """The rows' ratios, or their GFLOPs targets."""
        return self.targets or self.ratios

    def path_of(self, point: float) -> str:
        """How the row `point` reaches its budget: "slim" or "oneshot" (`path`; `auto` by the GFLOPs target)."""
        if self.path != "auto":
            return self.path
        return "oneshot" if self.targets and point >= ONESHOT_FROM else "slim"

    def finetune_epochs(self, point: float) -> int:
        """Fine-tuning epochs of the row `point`: `epochs_finetune`, or for a one-shot GFLOPs target below
        `ONESHOT_SHORT_FROM` the slim path's epochs (`epochs_sparse + epochs_finetune`): at those budgets the repaired
        prune kept up with slimming at equal epochs, and fell behind it with a few (docs/DESIGN.md, "Which path, by
        budget")."""
        if self.targets and self.path_of(point) == "oneshot" and point < ONESHOT_SHORT_FROM:
            return self.epochs_sparse + self.epochs_finetune
        return self.epochs_finetune

    def paths_as(self, path: str) -> list[str]:
        """Each row's path were `path` the setting: what a run folder made at another `path` compares."""
        return [replace(self, path=path).path_of(p) for p in self.points]

    @property
    def slim_points(self) -> tuple[float, ...]:
        """The rows that a sparse stage serves."""
        return tuple(p for p in self.points if self.path_of(p) == "slim")

    def sparse_stages(self) -> dict[float | None, str]:
        """The sparse stage that serves each slim row: by GFLOPs target (its own, or the smallest's with
        `one_sparse_stage`), or one stage `sparse` for every ratio (key None); none when no row slims."""
        slim = self.slim_points
        if not slim:
            return {}
        if not self.targets:
            return {None: "sparse"}
        if self.one_sparse_stage:
            return dict.fromkeys(slim, f"sparse-gflops-{min(slim):g}")
        return {t: f"sparse-gflops-{t:g}" for t in slim}

    def sparse_target(self, point: float | None = None) -> dict[str, float]:
        """A sparse stage's target: the GFLOPs share of the row `point` (of the smallest slim target when one stage
        serves every row), or the `sparsity` share of channels with ratios."""
        if not self.targets:
            return {"sparsity": self.sparsity}
        return {"target_gflops": min(self.slim_points) if self.one_sparse_stage or point is None else point}

    def label(self, point: float) -> str:
        """The table's name for the row `point`: the number, and "one-shot" on that path."""
        return f"{point:g}" + (" one-shot" if self.path_of(point) == "oneshot" else "")

    def sparse_args(self, point: float | None = None) -> dict[str, Any]:
        """A sparse stage's slimming arguments: `sr`, its target, and the ranking that prune will use too."""
        return {"sr": self.sr, **self.sparse_target(point), **{k: getattr(self, k) for k in RANKING}}

    def ranking(self) -> Ranking:
        """The ranking of every prune, made from the config's settings (checked by `check`)."""
        return Ranking.of(self)

    def check(self) -> None:
        """Bad settings fail before any training: each by its check in settings.py, then how they go together."""
        check_values("pipeline", self)
        if 1.0 in self.targets:
            raise ValueError(
                "target 1 is the unpruned model, which the table always has as its first row: leave it out"
            )
        if self.compare_at is not None and self.compare_at not in self.points:
            what = "targets" if self.targets else "ratios"
            raise ValueError(f"compare point {self.compare_at} must be one of the {what} {list(self.points)}")
        if self.slim_points and self.sr <= 0 and not any(self.sparse_target().values()):
            raise ValueError(
                f"sr={self.sr} and sparsity={self.sparsity}: one must be > 0, the pipeline's second stage is "
                "sparsity training"
            )
        if clash := sorted(RESERVED & set(self.train_args)):
            raise ValueError(f"train args {clash} are set by the pipeline itself: use its own options for them")
        check_output_folder(self.run_dir, "--run-dir")
        run_dir, weights = Path(self.run_dir).resolve(), Path(self.weights).resolve()
        if weights.is_relative_to(run_dir) and weights.parent != run_dir:
            raise ValueError(
                f"--weights '{self.weights}' is inside --run-dir '{self.run_dir}', whose stage folders the pipeline "
                "writes and reads as its own: copy it out of there, or choose another --run-dir"
            )
        # every stage, table and export at one size
        self.data, self.imgsz = steps.check_inputs(
            self.weights, data=self.data, imgsz=self.imgsz, kinds=self.deploy, train_args=self.train_args
        )
        self.data = str(Path(self.data).resolve())  # stages and Ultralytics' resume read it from any folder


PipelineConfig = make_dataclass(
    "PipelineConfig",
    pipeline_fields(),
    bases=(_PipelineRules,),
    kw_only=True,
    namespace={
        "__doc__": "What the pipeline trains and measures (one field per pipeline setting of `settings.py`). "
        "The defaults run on the demo data in minutes on a CPU."
    },
)


class Pipeline:
    """Runs the stages of a `PipelineConfig` in `run_dir`, skipping those already done."""

    def __init__(self, config: Any) -> None:
        config.check()
        self.cfg = config
        self.dir = Path(config.run_dir).resolve()
        self.ran: list[str] = []  # stages run (not skipped) by this call, in order

    def stage(self, name: str, output: Path, work: Callable[[], Any], done: Callable[[], bool] | None = None) -> Path:
        """Run `work` unless the stage is done (`done()`, by default: `output` exists); return `output`."""
        if (done or output.exists)():
            steps.say(f"stage '{name}' already done ({output}), skipping")
        else:
            steps.say(f"stage '{name}' ...")
            work()
            if not output.exists():
                raise RuntimeError(f"stage '{name}' finished without writing {output}")
            self.ran.append(name)
        return output

    def train(self, name: str, weights: str | Path, epochs: int, **kwargs: Any) -> Path:
        """A training stage whose output is `run_dir/name/weights/best.pt`; an interrupted one is resumed.

        Every stage takes one optimizer step per batch (nbs = batch), which gives the small sets this runs on their
        steps, except normal training from a trained .pt: that is stock Ultralytics (its nbs, 64), the baseline the
        user would get without yoloslim: at nbs 16 a pretrained model collapsed as its warm-up reached AdamW's full
        rate, at 64 it did not (docs/DESIGN.md, "Optimizer steps per batch"). The user's `train_args` win."""
        c = self.cfg
        stock = name == "normal" and Path(weights).suffix == ".pt"
        args = {**({} if stock else {"nbs": c.batch}), **c.train_args}
        where = {"data": c.data, "imgsz": c.imgsz, "batch": c.batch, "device": c.device, "project": self.dir}
        return self.stage(
            name,
            self.dir / name / "weights" / "best.pt",
            lambda: steps.train(weights, epochs=epochs, name=name, resume=True, **where, **kwargs, **args),
            done=lambda: steps.finished_run(self.dir, name),
        )

    def metrics(self, name: str, weights: Path) -> dict[str, float]:
        """Validation metrics of `weights`, cached as `run_dir/metrics/name.json`."""
        out = self.dir / "metrics" / f"{name}.json"
        c = self.cfg

        def work() -> None:
            where = {"imgsz": c.imgsz, "batch": c.batch, "device": c.device, "project": self.dir / "val"}
            atomic_write_text(out, json.dumps(steps.validate(weights, data=c.data, name=name, **where), indent=1))

        return json.loads(self.stage(f"val {name}", out, work).read_text())

    def onnx(self, weights: Path) -> Path:
        """The ONNX export of `weights` (next to it)."""
        return self.stage(
            f"export {weights.relative_to(self.dir)}",
            weights.with_suffix(".onnx"),
            lambda: steps.export(weights, imgsz=self.cfg.imgsz),
        )

    def pruned(self, name: str, weights: Path, point: float, fold: bool = True, repair: bool = False) -> Path:
        """A pruning stage (at a ratio, or a GFLOPs target) whose output is `run_dir/name/pruned.pt`; `repair`:
        repaired from the training images as `prune` repairs by default (the one-shot path; validated by the row)."""
        c = self.cfg
        amount = {"target": ("gflops", point)} if c.targets else {"ratio": point}
        fixed = {"data": c.data, "validate_pruned": False} if repair else {}
        save_dir = self.dir / name
        return self.stage(
            name,
            save_dir / "pruned.pt",
            lambda: steps.prune(weights, save_dir=save_dir, fold=fold, **amount, ranking=c.ranking(), **fixed),
        )

    def run(self) -> list[dict[str, Any]]:
        """Run every stage; write and print the tables; return the results table's rows."""
        normal = self.train("normal", self.cfg.weights, self.cfg.epochs_normal)
        sparse = self.sparse_stages(normal)
        self.gamma(normal, sparse)
        rows = self.rows(normal, sparse)
        compare = self.comparisons(normal, sparse)
        n = self.metrics("normal", normal)
        self.latencies(rows + compare)
        self.tables(rows, compare, n, sparse)
        if self.cfg.deploy:
            self.deploy_table(rows)
        c = self.cfg
        results_plot(
            rows, n, self.dir / "map_vs_gflops.png", f"{Path(c.weights).stem} on {Path(c.data).stem}, imgsz {c.imgsz}"
        )
        return rows

    def sparse_stages(self, normal: Path) -> dict[str, Path]:
        """Every sparse stage (name -> its best.pt), each trained once however many rows it serves."""
        models: dict[str, Path] = {}
        for point, name in self.cfg.sparse_stages().items():
            if name not in models:
                models[name] = self.train(name, normal, self.cfg.epochs_sparse, **self.cfg.sparse_args(point))
        return models

    def source(self, normal: Path, sparse: dict[str, Path], point: float) -> Path:
        """The model that the row `point` prunes: the normal-trained one on the one-shot path, else its sparse
        stage's."""
        if self.cfg.path_of(point) == "oneshot":
            return normal
        return sparse[self.cfg.sparse_stages()[point if self.cfg.targets else None]]

    def gamma(self, normal: Path, sparse: dict[str, Path]) -> None:
        """The gamma histograms of the normal model and every sparse one."""
        c, out = self.cfg, self.dir / "gamma_hist.png"
        labels = ["normal (sr=0)", *(self._sparse_label(name) for name in sparse)]
        ratio = None if c.targets else (c.sparsity or max(c.ratios))
        self.stage(
            "gamma", out, lambda: steps.gamma_report([normal, *sparse.values()], out=out, labels=labels, ratio=ratio)
        )

    def rows(self, normal: Path, sparse: dict[str, Path]) -> list[dict[str, Any]]:
        """The results rows: the unpruned model of the smallest point (the sparsest sparse model, or the normal one
        when no row slims) through the pruner, then one row per point."""
        c = self.cfg
        prefix = "gflops-" if c.targets else ""
        unpruned = 1.0 if c.targets else 0.0
        first = self.source(normal, sparse, min(c.points))
        rows = [self.row(f"{unpruned:g}", self.pruned(f"prune-{prefix}{unpruned:g}", first, unpruned))]
        for p in c.points:
            oneshot = c.path_of(p) == "oneshot"
            name = f"prune-{prefix}{'oneshot-' if oneshot else ''}{p:g}"
            pruned = self.pruned(name, self.source(normal, sparse, p), p, repair=oneshot)
            rows.append(self.row(c.label(p), pruned, epochs=c.finetune_epochs(p)))
        return rows

    def comparisons(self, normal: Path, sparse: dict[str, Path]) -> list[dict[str, Any]]:
        """At `compare_at`: the normal-trained model pruned with no repair instead of the row's model, and folding off.
        A one-shot row already prunes the normal-trained model, so there the first is the row without its repair,
        and the second is left out (the repair subsumes the fold)."""
        c, p = self.cfg, self.cfg.compare_at
        if p is None:
            return []
        prefix = "gflops-" if c.targets else ""
        oneshot = c.path_of(p) == "oneshot"
        unrepaired = self.pruned(f"prune-{prefix}normal-{p:g}", normal, p)
        epochs = c.finetune_epochs(p)  # the row's own: the comparison changes one thing
        pruned_normal = self.row(f"{p:g} {'no repair' if oneshot else 'normal-trained'}", unrepaired, epochs=epochs)
        if oneshot:
            return [pruned_normal]
        folded_off = self.pruned(f"prune-{prefix}nofold-{p:g}", self.source(normal, sparse, p), p, fold=False)
        return [pruned_normal, self.row(f"{p:g} no fold", folded_off, finetune=False)]

    def tables(self, rows: list[dict], compare: list[dict], normal: dict[str, float], sparse: dict[str, Path]) -> None:
        """The results table, and the comparisons beside the same point's row."""
        maps = (
            f"{self._sparse_label(name)} mAP50 {m['map50']:.4f}, mAP50-95 {m['map50_95']:.4f}"
            for name, m in ((name, self.metrics(name, path)) for name, path in sparse.items())
        )
        normal_maps = f"normal training mAP50 {normal['map50']:.4f}, mAP50-95 {normal['map50_95']:.4f}"
        note = f"Before pruning: {'; '.join([normal_maps, *maps])}."
        self.write_table(rows, normal, "results", note)
        if compare:
            same = next(row for row in rows if row["point"] == self.cfg.label(self.cfg.compare_at))
            self.write_table([rows[0], same, *compare], normal, "comparisons", note, skip_first=True)

    def _sparse_label(self, stage: str) -> str:
        """How the table and the histograms name a sparse stage: its L1 strength and target."""
        point = next(p for p, name in self.cfg.sparse_stages().items() if name == stage)
        target = ", ".join(f"{k}={v:g}" for k, v in self.cfg.sparse_target(point).items())
        return f"sparse (sr={self.cfg.sr:g}, {target})"

    def row(self, label: str, pruned: Path, finetune: bool = True, epochs: int | None = None) -> dict[str, Any]:
        """One table row: size and mAP of a pruned model, before and (optionally) after fine-tuning for `epochs`
        (default `epochs_finetune`)."""
        key = label.replace(" ", "-")
        before = self.metrics(f"pruned-{key}", pruned)
        row = {
            "point": label,
            "params": before["params"],
            "gflops": before["gflops"],
            "map50_before": before["map50"],
            "map50_95_before": before["map50_95"],
            "map50_after": None,
            "map50_95_after": None,
            "onnx": pruned.with_suffix(".onnx"),
        }
        if finetune:
            epochs = self.cfg.epochs_finetune if epochs is None else epochs
            tuned = self.train(f"finetune-{key}", pruned, epochs, finetune=True, **self.teacher())
            after = self.metrics(f"finetune-{key}", tuned)
            row.update(map50_after=after["map50"], map50_95_after=after["map50_95"], onnx=self.onnx(tuned))
        else:
            self.onnx(pruned)
        return row

    def deploy_table(self, rows: list[dict[str, Any]]) -> None:
        """Every row's final model as each deployable kind: size, latency side by side, the artifact's own mAP."""
        c = self.cfg
        models = {row["point"]: row["onnx"].with_suffix(".pt") for row in rows}
        table = steps.deploy_table(
            models, ["onnx", *c.deploy], data=c.data, imgsz=c.imgsz, work=self.dir / "deploy", repeats=c.latency_repeats
        )
        markdown = deploy_markdown(table, c.imgsz)
        atomic_write_text(self.dir / "deploy.md", markdown)
        atomic_write_csv(self.dir / "deploy.csv", DEPLOY_FIELDS, table)
        print(f"\ndeploy:\n{markdown}")

    def teacher(self) -> dict[str, str]:
        """Fine-tuning's teacher with `distill`: the normal-trained model, the score each row is measured against."""
        return {"distill_model": str(self.dir / "normal" / "weights" / "best.pt")} if self.cfg.distill else {}

    def latencies(self, rows: list[dict[str, Any]]) -> None:
        """onnxruntime CPU latency of every row's ONNX file, measured side by side now (never cached)."""
        measured = steps.onnx_latency_ms([row["onnx"] for row in rows], self.cfg.imgsz, self.cfg.latency_repeats)
        for row in rows:
            row["latency_ms"] = measured[row["onnx"]]
            row["onnx_mb"] = row["onnx"].stat().st_size / 2**20

    def write_table(
        self, rows: list[dict], normal: dict[str, float], stem: str, note: str, skip_first: bool = False
    ) -> None:
        """`stem`.md and `stem`.csv in the run folder, printed too; ratios are to `rows[0]`, which `skip_first`
        leaves out of the table itself."""
        point = "target GFLOPs" if self.cfg.targets else "ratio"
        markdown = results_markdown(rows, normal, point, self.cfg.imgsz, note, skip_first=skip_first)
        shown = rows[1:] if skip_first else rows
        atomic_write_text(self.dir / f"{stem}.md", markdown)
        atomic_write_csv(self.dir / f"{stem}.csv", [k for k in shown[0] if k != "onnx"], shown)
        print(f"\n{stem}:\n{markdown}")


def _same(name: str, there: Any, now: Any, by_digest: bool) -> bool:
    """Whether a stage setting is as a run folder recorded it: the inputs (weights, data) by their digests when the
    folder has them (`_changed_inputs`), else by resolved path; the rest as written."""
    if name in steps.INPUTS and (by_digest or Path(str(there)).resolve() == Path(str(now)).resolve()):
        return True
    return there == now


def _changed_inputs(recorded: dict[str, Any], made: dict[str, Any]) -> list[str]:
    """The inputs (weights, data) whose content differs from what a run folder recorded, each with its paths."""
    return [
        f"{k} ({recorded[k]['path']} there, {made[k]['path']} now)"
        if recorded[k]["path"] != made[k]["path"]
        else f"{k} ({made[k]['path']}: its content changed)"
        for k in made
        if steps.inputs_differ(recorded[k], made[k])
    ]


def run_pipeline(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline of `config`; return the table rows. The config is saved in the run folder; a new
    run folder is removed again when the run fails before its first checkpoint."""
    pipeline = Pipeline(config)
    with removed_unless_started(pipeline.dir, started=lambda folder: any(folder.rglob("*.pt"))):
        pipeline.dir.mkdir(parents=True, exist_ok=True)
        _record_settings(pipeline.dir, config)
        return pipeline.run()


def _record_settings(folder: Path, config: PipelineConfig) -> None:
    """Save `config` and its inputs' fingerprints as `folder/pipeline.json`, after refusing a folder that was made
    with other settings or inputs (its finished stages would be stale)."""
    saved_file = folder / "pipeline.json"
    settings = json.loads(json.dumps(asdict(config), default=str))
    made = steps.run_inputs(config.weights, config.data)
    if saved_file.exists():
        saved = {**LATER_SETTINGS, **json.loads(saved_file.read_text())}
        recorded = saved.pop("inputs", None)  # folders made before inputs were recorded: by resolved path
        changed = [k for k in STAGE_SETTINGS if not _same(k, saved.get(k), settings[k], by_digest=bool(recorded))]
        changed += _changed_inputs(recorded, made) if recorded else []
        if "path" in changed and config.paths_as(saved["path"]) == config.paths_as(config.path):
            changed.remove("path")  # e.g. a folder made before --path, whose ratio rows auto slims as it did
        if changed:
            raise ValueError(
                f"run folder '{folder}' was made with other {', '.join(changed)}: its finished stages would be "
                "stale; use another --run-dir (or delete that folder)"
            )
    atomic_write_text(saved_file, json.dumps({**settings, "inputs": made}, indent=1))
