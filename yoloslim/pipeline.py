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

Every stage writes its artefacts into the run folder and is skipped when they already exist, so an
interrupted pipeline picks up where it stopped when the same command is run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER

from yoloslim import steps
from yoloslim.atomic import atomic_write_csv, atomic_write_text
from yoloslim.channels import DEFAULT_STREAMS
from yoloslim.checkpoint import finished_training, readable
from yoloslim.data import resolve_data
from yoloslim.deploy import Kind, onnx_runners, side_by_side_latency_ms
from yoloslim.model import YOLO
from yoloslim.plots import plot_map_vs_gflops
from yoloslim.prune import DEFAULT_IMPORTANCE, SCRIPT_ROUND_TO, check_budget, check_ratio
from yoloslim.report import DEPLOY_COLUMNS, DEPLOY_FIELDS, deploy_rows, markdown_table
from yoloslim.sizes import check_batch, check_whole, fit_imgsz
from yoloslim.trainer import check_slim_args, ranking_args


RESERVED = {
    "data",
    "model",
    "epochs",
    "imgsz",
    "batch",
    "device",
    "project",
    "name",
    "exist_ok",
    "sr",
    "sparsity",
    "target_gflops",
    "importance",
    "streams",
    "round_to",
    "finetune",
    "resume",
    "distill_model",
}
# settings whose change makes finished stages stale: a run folder made with others is refused
STAGE_SETTINGS = (
    "data",
    "weights",
    "imgsz",
    "batch",
    "epochs_normal",
    "epochs_sparse",
    "epochs_finetune",
    "sr",
    "sparsity",
    "targets",
    "one_sparse_stage",
    "importance",
    "streams",
    "round_to",
    "distill",
    "train_args",
)

# stage settings added after run folders existed, with the value a folder saved without them ran at
LATER_SETTINGS: dict[str, Any] = {"distill": False}


@dataclass
class PipelineConfig:
    """What the pipeline trains and measures. The defaults run on the demo data in minutes on a CPU."""

    data: str = "demo"
    weights: str = "yolov8n.yaml"
    run_dir: str = "runs/yoloslim/pipeline"
    imgsz: int = 160
    batch: int = 16
    device: str | None = None
    # the demo's normal stage converges (15 epochs left it at 0.39, still rising): the stages after it continue
    # a converged model, as they assume
    epochs_normal: int = 30
    epochs_sparse: int = 15
    epochs_finetune: int = 5
    sr: float = 1e-2
    sparsity: float = 0.6  # share of prunable channels the sparse stage drives to exact zero (0 = plain L1 only)
    ratios: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    targets: tuple[float, ...] = ()  # GFLOPs shares to prune to, instead of the ratios (and `sparsity`)
    one_sparse_stage: bool = False  # with targets: one sparse stage (zeroing to the smallest) instead of one each
    compare_at: float | None = 0.6  # the ratio (or target) of the two comparisons; None skips them
    importance: str = DEFAULT_IMPORTANCE
    streams: bool = DEFAULT_STREAMS
    round_to: int = SCRIPT_ROUND_TO
    distill: bool = False  # fine-tune with the normal-trained model as the teacher (Ultralytics' distillation)
    latency_repeats: int = 30
    # deployable kinds besides FP32 ONNX for a deploy table of every row (onnx-int8, openvino, openvino-int8)
    deploy: tuple[str, ...] = ()
    # extra Ultralytics train arguments for every training stage; nbs defaults to `batch` here (no gradient
    # accumulation), which gives a small dataset 4x more optimizer steps, and so more L1 steps, per epoch
    train_args: dict[str, Any] = field(default_factory=dict)

    @property
    def points(self) -> tuple[float, ...]:
        """The rows' ratios, or their GFLOPs targets."""
        return self.targets or self.ratios

    def sparse_stages(self) -> dict[float | None, str]:
        """The sparse stage that serves each row: by GFLOPs target (its own, or the smallest's with
        `one_sparse_stage`), or one stage `sparse` for every ratio (key None)."""
        if not self.targets:
            return {None: "sparse"}
        if self.one_sparse_stage:
            return dict.fromkeys(self.targets, f"sparse-gflops-{min(self.targets):g}")
        return {t: f"sparse-gflops-{t:g}" for t in self.targets}

    def sparse_target(self, point: float | None = None) -> dict[str, float]:
        """A sparse stage's target: the GFLOPs share of the row `point` (of the smallest target when one stage
        serves every row), or the `sparsity` share of channels with ratios."""
        if not self.targets:
            return {"sparsity": self.sparsity}
        return {"target_gflops": min(self.targets) if self.one_sparse_stage or point is None else point}

    def sparse_args(self, point: float | None = None) -> dict[str, Any]:
        """A sparse stage's slimming arguments: `sr`, its target, and the ranking that prune will use too."""
        return {"sr": self.sr, **self.sparse_target(point), **ranking_args(self)}

    def check(self) -> None:
        """Bad settings fail before any training."""
        what = "targets" if self.targets else "ratios"
        for r in self.points:
            check_budget("gflops", r) if self.targets else check_ratio(r)
        if 1.0 in self.targets:
            raise ValueError(
                "target 1 is the unpruned model, which the table always has as its first row: leave it out"
            )
        if self.compare_at is not None and self.compare_at not in self.points:
            raise ValueError(f"compare point {self.compare_at} must be one of the {what} {list(self.points)}")
        check_slim_args(self.sparse_args())
        if self.sr <= 0 and not any(self.sparse_target().values()):
            raise ValueError(
                f"sr={self.sr} and sparsity={self.sparsity}: one must be > 0, the pipeline's second stage is sparsity training"
            )
        if clash := sorted(RESERVED & set(self.train_args)):
            raise ValueError(f"train args {clash} are set by the pipeline itself: use its own options for them")
        steps.check_model_source(self.weights)
        for kind in self.deploy:
            Kind.parse(kind)  # a known kind whose runtime is installed
        self.batch = check_batch(self.batch, autobatch=False)  # nbs is the batch here: no AutoBatch
        for name in ("epochs_normal", "epochs_sparse", "epochs_finetune", "latency_repeats"):
            check_whole(name, getattr(self, name))
        self.imgsz = fit_imgsz(self.imgsz, YOLO(self.weights).model)  # every stage, table and export at one size
        self.data = resolve_data(self.data)


class Pipeline:
    """Runs the stages of a `PipelineConfig` in `run_dir`, skipping those already done."""

    def __init__(self, config: PipelineConfig) -> None:
        config.check()
        self.cfg = config
        self.dir = Path(config.run_dir).resolve()
        self.ran: list[str] = []  # stages run (not skipped) by this call, in order

    def stage(self, name: str, output: Path, work: Callable[[], Any], done: Callable[[], bool] | None = None) -> Path:
        """Run `work` unless the stage is done (`done()`, by default: `output` exists); return `output`."""
        if (done or output.exists)():
            LOGGER.info(f"{steps.PREFIX} stage '{name}' already done ({output}), skipping")
        else:
            LOGGER.info(f"{steps.PREFIX} stage '{name}' ...")
            work()
            if not output.exists():
                raise RuntimeError(f"stage '{name}' finished without writing {output}")
            self.ran.append(name)
        return output

    def train(self, name: str, weights: str | Path, epochs: int, **kwargs: Any) -> Path:
        """A training stage whose output is `run_dir/name/weights/best.pt`; an interrupted one is resumed."""
        last = self.dir / name / "weights" / "last.pt"
        c = self.cfg
        args = {"nbs": c.batch, **c.train_args}  # one optimizer step per batch: the L1 term acts once per step

        def work() -> None:
            if readable(last):
                YOLO(last).train(resume=True)
            else:
                if last.exists():  # killed while Ultralytics wrote it: start the stage again
                    LOGGER.warning(f"{steps.PREFIX} {last} is truncated or unreadable; stage '{name}' starts again")
                    last.replace(last.with_name("last.pt.unreadable"))
                steps.train(weights, c.data, epochs, c.imgsz, c.batch, c.device, self.dir, name, **kwargs, **args)

        return self.stage(
            name, last.with_name("best.pt"), work, done=lambda: readable(last) and finished_training(last)
        )

    def metrics(self, name: str, weights: Path) -> dict[str, float]:
        """Validation metrics of `weights`, cached as `run_dir/metrics/name.json`."""
        out = self.dir / "metrics" / f"{name}.json"

        def work() -> None:
            m = steps.validate(
                weights,
                self.cfg.data,
                imgsz=self.cfg.imgsz,
                batch=self.cfg.batch,
                device=self.cfg.device,
                project=self.dir / "val",
                name=name,
            )
            atomic_write_text(out, json.dumps(m, indent=1))

        return json.loads(self.stage(f"val {name}", out, work).read_text())

    def onnx(self, weights: Path) -> Path:
        """The ONNX export of `weights` (next to it)."""
        return self.stage(
            f"export {weights.relative_to(self.dir)}",
            weights.with_suffix(".onnx"),
            lambda: steps.export(weights, imgsz=self.cfg.imgsz),
        )

    def pruned(self, name: str, weights: Path, point: float, fold: bool = True) -> Path:
        """A pruning stage (at a ratio, or a GFLOPs target) whose output is `run_dir/name/pruned.pt`."""
        c = self.cfg
        save_dir = self.dir / name
        ratio, target = (None, ("gflops", point)) if c.targets else (point, None)
        args = {**ranking_args(c), "fold": fold}
        return self.stage(
            name, save_dir / "pruned.pt", lambda: steps.prune(weights, ratio, save_dir, target=target, **args)
        )

    def run(self) -> list[dict[str, Any]]:
        """Run every stage; write and print the table; return its rows."""
        c = self.cfg
        normal = self.train("normal", c.weights, c.epochs_normal)
        models: dict[str, Path] = {}  # sparse stage name -> its best.pt
        for point, name in c.sparse_stages().items():
            if name not in models:
                models[name] = self.train(name, normal, c.epochs_sparse, **c.sparse_args(point))
        sparse_of = {point: models[name] for point, name in c.sparse_stages().items()}
        self.stage(
            "gamma",
            self.dir / "gamma_hist.png",
            lambda: steps.gamma_report(
                [normal, *models.values()],
                self.dir / "gamma_hist.png",
                labels=["normal (sr=0)", *(self._sparse_label(name) for name in models)],
                ratio=None if c.targets else (c.sparsity or max(c.ratios)),
            ),
        )
        name = "gflops-" if c.targets else ""
        first = sparse_of[min(c.targets)] if c.targets else sparse_of[None]
        unpruned = 1.0 if c.targets else 0.0  # the first row: the (sparsest) sparse model through the pruner, unchanged
        rows = [self.row(f"{unpruned:g}", self.pruned(f"prune-{name}{unpruned:g}", first, unpruned))]
        for p in c.points:
            sparse = sparse_of[p if c.targets else None]
            rows.append(self.row(f"{p:g}", self.pruned(f"prune-{name}{p:g}", sparse, p)))
        compare = []
        if (p := c.compare_at) is not None:
            sparse = sparse_of[p if c.targets else None]
            compare = [
                self.row(f"{p:g} normal-trained", self.pruned(f"prune-{name}normal-{p:g}", normal, p)),
                self.row(
                    f"{p:g} no fold", self.pruned(f"prune-{name}nofold-{p:g}", sparse, p, fold=False), finetune=False
                ),
            ]
        n = self.metrics("normal", normal)
        self.latencies(rows + compare)
        sparse_maps = "; ".join(
            f"{self._sparse_label(name)} mAP50 {m['map50']:.4f}, mAP50-95 {m['map50_95']:.4f}"
            for name, m in ((name, self.metrics(name, path)) for name, path in models.items())
        )
        note = f"Before pruning: normal training mAP50 {n['map50']:.4f}, mAP50-95 {n['map50_95']:.4f}; {sparse_maps}."
        self.write_table(rows, rows[0], n, "results", note)
        if compare:
            same = next(row for row in rows if row["point"] == f"{c.compare_at:g}")
            self.write_table([same, *compare], rows[0], n, "comparisons", note)
        if c.deploy:
            self.deploy_table(rows)
        plot_map_vs_gflops(
            [
                {
                    "label": r["point"],
                    "gflops": r["gflops"] / rows[0]["gflops"],
                    "map_before": r["map50_95_before"],
                    "map_after": r["map50_95_after"],
                }
                for r in rows
            ],
            n["map50_95"],
            self.dir / "map_vs_gflops.png",
            title=f"{Path(c.weights).stem} on {Path(c.data).stem}, imgsz {c.imgsz}",
        )
        return rows

    def _sparse_label(self, stage: str) -> str:
        """How the table and the histograms name a sparse stage: its L1 strength and target."""
        point = next(p for p, name in self.cfg.sparse_stages().items() if name == stage)
        target = ", ".join(f"{k}={v:g}" for k, v in self.cfg.sparse_target(point).items())
        return f"sparse (sr={self.cfg.sr:g}, {target})"

    def row(self, label: str, pruned: Path, finetune: bool = True) -> dict[str, Any]:
        """One table row: size and mAP of a pruned model, before and (optionally) after fine-tuning."""
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
            tuned = self.train(f"finetune-{key}", pruned, self.cfg.epochs_finetune, finetune=True, **self.teacher())
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
            models, ["onnx", *c.deploy], c.data, c.imgsz, self.dir / "deploy", repeats=c.latency_repeats
        )
        caption = (
            f"Deployable artifacts of every row (imgsz {c.imgsz}, batch-1 CPU latency side by side; x = share of the "
            "first row's FP32 ONNX latency; mAP50-95 of each artifact itself, and its change from the same model's "
            "FP32 ONNX file)"
        )
        markdown = f"{caption}\n\n{markdown_table(DEPLOY_COLUMNS, deploy_rows(table))}"
        atomic_write_text(self.dir / "deploy.md", markdown)
        atomic_write_csv(self.dir / "deploy.csv", DEPLOY_FIELDS, table)
        print(f"\ndeploy:\n{markdown}")

    def teacher(self) -> dict[str, str]:
        """Fine-tuning's teacher with `distill`: the normal-trained model, the score each row is measured against."""
        return {"distill_model": str(self.dir / "normal" / "weights" / "best.pt")} if self.cfg.distill else {}

    def latencies(self, rows: list[dict[str, Any]]) -> None:
        """onnxruntime CPU latency of every row's ONNX file, measured side by side now (never cached)."""
        measured = side_by_side_latency_ms(
            onnx_runners([row["onnx"] for row in rows]), self.cfg.imgsz, repeats=self.cfg.latency_repeats
        )
        for row in rows:
            row["latency_ms"] = measured[row["onnx"]]
            row["onnx_mb"] = row["onnx"].stat().st_size / 2**20

    def write_table(
        self, rows: list[dict[str, Any]], base: dict[str, Any], normal: dict[str, float], stem: str, note: str
    ) -> None:
        """Markdown and CSV tables; sizes and latency carry their ratio to `base` (the unpruned sparse model) in
        brackets, and the last column is the change from the `normal`-trained model, the user's starting point."""

        def ratio(row: dict[str, Any], key: str, fmt: str) -> str:
            return f"{row[key]:{fmt}} ({row[key] / base[key]:.2f}x)"

        def pts(row: dict[str, Any], key: str) -> str:
            if row[key] is None:
                return "-"
            return f"{row[key]:.4f}" if row is base else f"{row[key]:.4f} ({100 * (row[key] - base[key]):+.1f})"

        def change(row: dict[str, Any]) -> str:
            best = row["map50_95_after"] if row["map50_95_after"] is not None else row["map50_95_before"]
            return f"{100 * (best - normal['map50_95']):+.1f}"

        head = (
            "target GFLOPs" if self.cfg.targets else "ratio",
            "params (M)",
            "GFLOPs",
            "mAP50 pruned",
            "mAP50-95 pruned",
            "mAP50 fine-tuned",
            "mAP50-95 fine-tuned",
            "ONNX MB",
            "ORT ms/img",
            "mAP50-95 change vs the normal-trained model (pt)",
        )
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            lines.append(
                "| "
                + " | ".join(
                    [
                        r["point"],
                        f"{r['params'] / 1e6:.3f} ({r['params'] / base['params']:.2f}x)",
                        ratio(r, "gflops", ".3f"),
                        pts(r, "map50_before"),
                        pts(r, "map50_95_before"),
                        pts(r, "map50_after"),
                        pts(r, "map50_95_after"),
                        ratio(r, "onnx_mb", ".2f"),
                        ratio(r, "latency_ms", ".2f"),
                        change(r),
                    ]
                )
                + " |"
            )
        legend = (
            "mAP: absolute, with the change from the unpruned sparse model (first row; with one sparse stage per target, "
            "the smallest target's) in points in brackets; the last "
            "column: fine-tuned (else pruned) mAP50-95 minus the normal-trained model's "
            f"({normal['map50_95']:.4f}); "
            f"latency: onnxruntime CPU, batch 1, imgsz {self.cfg.imgsz}, median of interleaved runs."
        )
        markdown = "\n".join(lines) + f"\n\n{legend}\n{note}\n"
        atomic_write_text(self.dir / f"{stem}.md", markdown)
        atomic_write_csv(self.dir / f"{stem}.csv", [k for k in rows[0] if k != "onnx"], rows)
        print(f"\n{stem}:\n{markdown}")


def run_pipeline(config: PipelineConfig) -> list[dict[str, Any]]:
    """Run (or resume) the pipeline of `config`; return the table rows. The config is saved in the run folder."""
    pipeline = Pipeline(config)
    pipeline.dir.mkdir(parents=True, exist_ok=True)
    saved_file = pipeline.dir / "pipeline.json"
    settings = json.loads(json.dumps(asdict(config), default=str))
    if saved_file.exists():
        saved = {**LATER_SETTINGS, **json.loads(saved_file.read_text())}
        if changed := [k for k in STAGE_SETTINGS if saved.get(k) != settings[k]]:
            raise ValueError(
                f"run folder '{pipeline.dir}' was made with other {', '.join(changed)}: its finished stages would be "
                "stale; use another --run-dir (or delete that folder)"
            )
    atomic_write_text(saved_file, json.dumps(settings, indent=1))
    return pipeline.run()
