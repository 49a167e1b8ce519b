"""Bad inputs of the second reliability round (issue 20): each is a one-line error that says what to do and writes
nothing, or is handled as the user asked, never a silent fallback or no-op (docs/RELIABILITY.md, rows 49-64)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ultralytics.utils import LOGGER

from yoloslim import Pruner, cli, prune_model, steps
from yoloslim.checkpoint import load_model, readable, save_checkpoint
from yoloslim.data import resolve_data
from yoloslim.deploy import Kind
from yoloslim.pipeline import PipelineConfig, run_pipeline
from yoloslim.reconstruct import Repair
from yoloslim.settings import Ranking

from .conftest import GAMMA, assert_one_line_error, build_model, yoloslim_cli

UNWRITABLE = Path("/sys/yoloslim-out")  # sysfs takes no new files, for root too (permission bits do not stop root)


@pytest.fixture(scope="module")
def pruned(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, ratio=0.4, save_dir=tmp_path_factory.mktemp("pruned"), ranking=GAMMA)


@contextmanager
def _warnings() -> Iterator[list[str]]:
    """Ultralytics' LOGGER warnings emitted inside the block (its logger does not propagate to caplog)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    LOGGER.addHandler(handler)
    try:
        yield records
    finally:
        LOGGER.removeHandler(handler)


@pytest.mark.slow
def test_prune_that_removes_nothing_is_an_error_unless_allowed(tiny_ckpt, tmp_path) -> None:
    for args in ({"round_to": 4096}, {"min_keep": 1.0}):
        out = tmp_path / f"noop-{next(iter(args))}"
        with pytest.raises(ValueError, match="removes no channel.*--allow-unchanged"):
            steps.prune(tiny_ckpt, ratio=0.5, save_dir=out, ranking=Ranking(importance="gamma", **args))
        assert not out.exists()
    saved = steps.prune(
        tiny_ckpt, ratio=0.5, save_dir=tmp_path / "asked", ranking=Ranking(importance="gamma", round_to=4096),
        allow_unchanged=True,
    )
    assert sum(p.numel() for p in load_model(saved)[0].parameters()) == sum(
        p.numel() for p in load_model(tiny_ckpt)[0].parameters()
    )
    assert_one_line_error(
        yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--round-to", "4096", "--importance", "gamma", "--no-val"),
        "removes no channel",
    )


def test_a_plan_is_bound_to_the_widths_it_was_made_for() -> None:
    model = build_model()
    pruner = Pruner(model, GAMMA)
    plan = pruner.plan(0.5)
    pruner.apply(plan)
    sliced = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="no longer has the channel counts.*build a new Pruner"):
        pruner.apply(plan)  # was: IndexError half-way, the model left half-sliced
    assert all(torch.equal(a, b) for a, b in zip(sliced, model.parameters(), strict=True))
    other = build_model("yolov8s.yaml")
    with pytest.raises(ValueError, match="made for a model with other channel counts"):
        Pruner(other, GAMMA).apply(plan)
    twin = build_model()  # a model of the same widths takes the plan (e.g. a copy of the one planned on)
    Pruner(twin, GAMMA).apply(plan)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]


def test_finetune_of_an_unpruned_model_warns(tiny_ckpt, tiny_data, runs) -> None:
    with _warnings() as warned:
        steps.train(
            tiny_ckpt,
            data=tiny_data,
            epochs=1,
            imgsz=64,
            batch=8,
            project=runs,
            name="ft-unpruned",
            finetune=True,
            workers=0,
            val=False,
        )
    assert any("has not pruned" in w for w in warned), warned


@pytest.mark.slow
def test_missing_recorded_dataset_is_an_error_that_names_it(tiny_ckpt, tmp_path) -> None:
    model, ckpt = load_model(tiny_ckpt)
    moved = save_checkpoint(model, tmp_path / "moved.pt", train_args={**ckpt["train_args"], "data": "/gone/data.yaml"})
    assert_one_line_error(
        yoloslim_cli("val", "--weights", str(moved)), "was trained on '/gone/data.yaml', which is not here"
    )
    assert_one_line_error(
        yoloslim_cli("prune", "--weights", str(moved), "--save-dir", str(tmp_path / "p")), "/gone/data.yaml"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.pt"]
    # a ranking that reads no data prunes a downloaded .pt; only the validation is skipped, and said
    out = yoloslim_cli("prune", "--weights", str(moved), "--importance", "gamma", "--save-dir", str(tmp_path / "g"))
    assert out.returncode == 0 and (tmp_path / "g" / "pruned.pt").is_file(), out.stderr[-2000:]
    assert "which is not here" in out.stderr + out.stdout and "pruned without validation" in out.stderr + out.stdout
    # a repair asked for by name is not skipped quietly (was: the same warning, and a model without it)
    argv = ("prune", "--weights", str(moved), "--importance", "gamma", "--save-dir", str(tmp_path / "b"))
    for flags in (["--recalibrate-bn"], ["--calib-images", "64"]):
        out = yoloslim_cli(*argv, *flags)
        assert_one_line_error(out, "(--recalibrate-bn and --calib-images read its training images)")
    assert not (tmp_path / "b").exists()


def test_deleted_demo_dataset_is_made_again_not_replaced(tmp_path) -> None:
    """A checkpoint trained on the built-in demo set records its cache path; the set is made again, byte for byte."""
    from yoloslim.data import demo_dataset, recorded_data

    original = demo_dataset(tmp_path / "cache", n_train=2, n_val=1, imgsz=64, seed=3)
    first = sorted((p.name, p.read_bytes()) for p in original.parent.rglob("*.jpg"))
    for p in sorted(original.parent.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    assert recorded_data(str(original), "w.pt") == str(original)
    assert sorted((p.name, p.read_bytes()) for p in original.parent.rglob("*.jpg")) == first


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ("pipeline", "--imgsz", "0"),
        ("pipeline", "--imgsz", "-32"),
        ("pipeline", "--batch", "-3"),
        ("val", "--imgsz", "0"),
        ("export", "--imgsz", "-32"),
        ("train", "--batch", "0"),
        ("train", "--epochs", "0"),
        ("finetune", "--epochs", "-1"),
    ],
)
def test_bad_sizes_are_one_line_errors(argv) -> None:
    assert_one_line_error(yoloslim_cli(*argv), "must be a whole number > 0")


def test_steps_refuse_bad_counts(tiny_data, runs) -> None:
    for epochs, imgsz, batch, bad in ((0, 64, 8, "epochs=0"), (1, 64.5, 8, "imgsz=64.5"), (1, 64, -3, "batch=-3")):
        with pytest.raises(ValueError, match=f"{bad} must be a whole number > 0"):
            steps.train(
                "yolov8n.yaml",
                data=tiny_data,
                epochs=epochs,
                imgsz=imgsz,
                batch=batch,
                project=runs,
                name="bad-count",
            )
    assert not (runs / "bad-count").exists()


def test_pipeline_sizes_are_checked_and_rounded() -> None:
    with pytest.raises(ValueError, match="batch=-3 must be a whole number > 0"):
        PipelineConfig(batch=-3).check()
    with pytest.raises(ValueError, match="imgsz=0 must be"):
        PipelineConfig(imgsz=0).check()
    with pytest.raises(ValueError, match="epochs_sparse=0"):
        PipelineConfig(epochs_sparse=0).check()
    for repeated, message in (
        ({"ratios": (0.3, 0.30, 0.5)}, "--ratios gives 0.3 more than once"),
        ({"targets": (0.5, 0.4, 0.5)}, "--targets gives 0.5 more than once"),
        ({"targets": (0.3, 0.30000001)}, "--targets gives 0.3 more than once"),  # one name: one folder, one row
        ({"deploy": ("onnx-int8", "onnx-int8")}, "--deploy gives onnx-int8 more than once"),
    ):
        with pytest.raises(ValueError, match=message):  # was: the same row made twice
            PipelineConfig(**repeated).check()
    config = PipelineConfig(imgsz=100)
    with _warnings() as warned:
        config.check()
    assert config.imgsz == 128 and any("not a multiple of the model's stride 32: using 128" in w for w in warned)


def test_gamma_report_of_two_weights_with_one_file_name(tiny_ckpt, pruned, tmp_path) -> None:
    a, b = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    for path, source in ((a, tiny_ckpt), (b, pruned)):
        path.parent.mkdir()
        path.write_bytes(source.read_bytes())
    out = steps.gamma_report([a, b], out=tmp_path / "h.png")
    summary = (tmp_path / "h.txt").read_text()
    assert out.is_file() and "a/best" in summary and "b/best" in summary
    with pytest.raises(ValueError, match="repeat a name"):
        steps.gamma_report([a, b], out=tmp_path / "h2.png", labels=["x", "x"])
    with pytest.raises(ValueError, match="is not a .png file"):
        steps.gamma_report([a], out=tmp_path)
    assert not (tmp_path / "h2.png").exists()


def test_gamma_report_never_writes_over_its_input(tiny_ckpt, tmp_path) -> None:
    """An output that is an input by any path (the same name, `..`, a symlink, a .txt summary that would be the
    weights) is refused before anything is written; an output that is not a PNG is refused too."""
    weights = tmp_path / "m" / "best.pt"
    weights.parent.mkdir()
    weights.write_bytes(tiny_ckpt.read_bytes())
    before = weights.read_bytes()
    (tmp_path / "link.png").symlink_to(weights)
    (tmp_path / "m" / "summary.txt").symlink_to(weights)
    for out, message in (
        (weights, "is not a .png file"),
        (tmp_path / "m" / "x.txt", "is not a .png file"),
        (tmp_path / "link.png", "--out .* is the input"),
        (tmp_path / "m" / ".." / "m" / "summary.png", "its text summary .* is the input"),
    ):
        with pytest.raises(ValueError, match=message):
            steps.gamma_report([weights], out=out)
    assert weights.read_bytes() == before


@pytest.mark.slow
def test_output_folders_that_cannot_be_written(tiny_ckpt, tmp_path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        steps.prune(tiny_ckpt, ratio=0.5, save_dir=a_file, ranking=GAMMA)
    assert a_file.read_text() == "x"
    with pytest.raises(ValueError, match="cannot be written"):
        steps.prune(tiny_ckpt, ratio=0.5, save_dir=UNWRITABLE, ranking=GAMMA)
    with pytest.raises(ValueError, match="cannot be written"):
        steps.gamma_report([tiny_ckpt], out=UNWRITABLE / "h.png")
    assert_one_line_error(yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--save-dir", str(a_file)), "not a folder")


@pytest.mark.slow
def test_bad_thread_counts_warn_and_are_ignored() -> None:
    for value in ("²", "0", "abc", "-1"):
        out = subprocess.run(
            [sys.executable, "-c", "import yoloslim; print(yoloslim.runtime.THREADS)"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "YOLOSLIM_THREADS": value, "OMP_NUM_THREADS": ""},
        )
        assert out.returncode == 0 and int(out.stdout) == len(os.sched_getaffinity(0)), out.stderr
        assert f"YOLOSLIM_THREADS={value!r} is not a whole number > 0" in out.stderr


@pytest.mark.slow
def test_more_threads_than_cores_are_cut_to_the_cores_and_said() -> None:
    """YOLOSLIM_THREADS=10000 was taken as given and made val 8x slower."""
    cores = len(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", "import yoloslim; print(yoloslim.runtime.THREADS)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "YOLOSLIM_THREADS": "10000", "OMP_NUM_THREADS": ""},
    )
    assert out.returncode == 0 and int(out.stdout) == cores, out.stderr
    assert f"YOLOSLIM_THREADS=10000 is more than the {cores} cores here: using {cores}" in out.stderr


def test_training_a_classification_checkpoint_is_refused(tiny_data, runs, tmp_path) -> None:
    from ultralytics.nn.tasks import ClassificationModel

    cls = save_checkpoint(ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False), tmp_path / "cls.pt")
    with pytest.raises(ValueError, match="is a classify model: yoloslim trains the tasks"):
        steps.train(cls, data=tiny_data, epochs=1, imgsz=64, batch=8, device=None, project=runs, name="cls-run")
    assert not (runs / "cls-run").exists()


@pytest.mark.slow
def test_unwritable_cache_says_what_to_set(tiny_ckpt, monkeypatch) -> None:
    monkeypatch.setenv("YOLOSLIM_CACHE", str(UNWRITABLE))
    with pytest.raises(OSError, match="set YOLOSLIM_CACHE to a writable folder"):
        resolve_data("demo")
    out = yoloslim_cli("val", "--weights", str(tiny_ckpt), "--data", "demo", env={"YOLOSLIM_CACHE": str(UNWRITABLE)})
    assert_one_line_error(out, "YOLOSLIM_CACHE")


def test_ratios_as_numpy_and_torch_scalars() -> None:
    model = build_model()
    sizes = [
        sum(p.numel() for p in prune_model(model, ratio, ranking=GAMMA)[0].parameters())
        for ratio in (0.5, np.float32(0.5), np.float64(0.5), torch.tensor(0.5))
    ]
    assert len(set(sizes)) == 1 and sizes[0] < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="'0.5' is not a number"):
        prune_model(model, "0.5", ranking=GAMMA)
    with pytest.raises(ValueError, match="round_to=2.5 must be a whole number"):
        Ranking(round_to=2.5)


def test_a_best_pt_of_an_earlier_run_in_the_folder_is_named_when_pruned(tiny_ckpt, tmp_path) -> None:
    """A run that stops before saving its best.pt leaves the earlier run's best.pt beside its own args.yaml (same
    folder, `exist_ok`): pruning it says whose it is; the run's own checkpoint prunes without a word of it."""
    run = tmp_path / "sp1"
    (run / "weights").mkdir(parents=True)
    best = run / "weights" / "best.pt"
    best.write_bytes(tiny_ckpt.read_bytes())
    args = yaml.safe_load((tiny_ckpt.parent.parent / "args.yaml").read_text())
    (run / "args.yaml").write_text(yaml.safe_dump(args))
    with _warnings() as warned:
        steps.prune(best, ratio=0.4, save_dir=tmp_path / "own", ranking=GAMMA)
    assert not [w for w in warned if "earlier run" in w]
    (run / "args.yaml").write_text(yaml.safe_dump({**args, "sparsity": 0.3, "seed": 7, "imgsz": 96}))
    with _warnings() as warned:
        steps.prune(best, ratio=0.4, save_dir=tmp_path / "stale", ranking=GAMMA)
    said = [w for w in warned if "earlier run" in w]
    assert len(said) == 1 and "sparsity 0.0 there, 0.3 in args.yaml" in said[0] and "seed 0 there, 7" in said[0]
    assert "imgsz" not in said[0]  # Ultralytics rounds imgsz after writing args.yaml: not a sign of another run


@pytest.fixture(scope="module")
def no_valid_images(tiny_data, tmp_path_factory) -> str:
    """The tiny dataset with every label of a class it does not have: Ultralytics drops every image and raises a
    RuntimeError (a dataset error that only shows when a run reads its images)."""
    root = tmp_path_factory.mktemp("no-valid-images")
    shutil.copytree(Path(tiny_data).parent, root / "d", ignore=shutil.ignore_patterns("*.cache"))
    for label in (root / "d" / "labels").rglob("*.txt"):
        label.write_text("".join(f"99 {line.split(maxsplit=1)[1]}\n" for line in label.read_text().splitlines()))
    spec = yaml.safe_load(Path(tiny_data).read_text())
    (root / "d" / "data.yaml").write_text(yaml.safe_dump({**spec, "path": str(root / "d")}))
    return str(root / "d" / "data.yaml")


@pytest.mark.slow
def test_an_ultralytics_dataset_error_is_one_line_and_traceback_on_request(tiny_ckpt, no_valid_images) -> None:
    """Labels whose classes the dataset does not have: Ultralytics drops every image and raises a RuntimeError that
    lists them all. The CLI gives its type and first line; `YOLOSLIM_TRACEBACK=1` gives the traceback."""
    argv = ("val", "--weights", str(tiny_ckpt), "--data", no_valid_images, "--imgsz", "64")
    out = yoloslim_cli(*argv)
    assert_one_line_error(out, "RuntimeError: No valid images found in")
    assert "YOLOSLIM_TRACEBACK=1 shows where" in out.stderr.splitlines()[-1]
    assert "Traceback" in yoloslim_cli(*argv, env={"YOLOSLIM_TRACEBACK": "1"}).stderr


class _Touch:
    """Unpickling this runs `os.system("touch PATH")`: a checkpoint that runs code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.slow
def test_ultralytics_safe_load_refuses_code_and_loads_yoloslim_checkpoints(pruned, tiny_data, tmp_path) -> None:
    """A .pt file is a pickle: by default Ultralytics (and so yoloslim) loads it with `weights_only=False`, and a
    hostile one runs its code. With `ULTRALYTICS_SAFE_LOAD=1` it is refused without running anything, and the
    checkpoints yoloslim writes (here a pruned one) still load, validate and prune."""
    marker, evil = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model": _Touch(marker), "train_args": {}}, evil)
    safe = {"ULTRALYTICS_SAFE_LOAD": "1"}
    out = yoloslim_cli("prune", "--weights", str(evil), "--importance", "gamma", "--no-val", env=safe)
    assert_one_line_error(out, "not a readable Ultralytics checkpoint")
    assert not marker.exists()
    argv = ("--weights", str(pruned), "--data", tiny_data)
    assert yoloslim_cli("val", *argv, "--imgsz", "64", env=safe).returncode == 0
    again = yoloslim_cli("prune", *argv, "--prune-ratio", "0.2", "--save-dir", str(tmp_path / "again"), env=safe)
    assert again.returncode == 0 and (tmp_path / "again" / "pruned.pt").is_file(), again.stderr[-2000:]


def test_a_model_on_the_meta_device_is_refused_by_the_pruner() -> None:
    """Weights on the meta device (shapes only, as a model is before its weights are loaded): a one-line ValueError,
    not torch's RuntimeError from deep in the ranking."""
    with pytest.raises(ValueError, match="on the meta device"):
        Pruner(build_model().to("meta"), GAMMA)


def test_a_run_that_fails_on_its_data_leaves_no_run_folder(tiny_ckpt, no_valid_images, tmp_path) -> None:
    """Training, validation and the pipeline stop on a dataset error before their first checkpoint: the run folders
    they made (and the project folder made for them) are removed again; a folder that was there stays as it was."""
    project = tmp_path / "new" / "runs"
    where = {"data": no_valid_images, "imgsz": 64, "project": project}
    with pytest.raises(RuntimeError, match="No valid images"):
        steps.train(tiny_ckpt, epochs=1, batch=8, name="finetune", finetune=False, **where)
    with pytest.raises(RuntimeError, match="No valid images"):
        steps.validate(tiny_ckpt, **where)
    assert not (tmp_path / "new").exists()  # was: runs/finetune/{args.yaml, weights/} and an empty runs/val
    kept = tmp_path / "kept"
    (kept / "val").mkdir(parents=True)
    (kept / "val" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="No valid images"):
        steps.validate(tiny_ckpt, data=no_valid_images, imgsz=64, project=kept)
    assert (kept / "val" / "notes.txt").read_text() == "mine"
    config = PipelineConfig(weights=str(tiny_ckpt), data=no_valid_images, imgsz=64, run_dir=str(tmp_path / "p"))
    with pytest.raises(RuntimeError, match="No valid images"):
        run_pipeline(config)
    assert not (tmp_path / "p").exists()  # was: a pipeline.json that a corrected rerun would have to match


def test_a_pipeline_refuses_what_would_fail_later_before_its_run_folder(tiny_ckpt, tiny_data, tmp_path) -> None:
    """Each of these used to fail after `pipeline.json` recorded it (or, for weights inside a stage folder, to take
    them for a finished stage); now each is a one-line error before the run folder is made, its input untouched."""
    inside = tmp_path / "run" / "normal" / "weights" / "last.pt"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(tiny_ckpt.read_bytes())
    (tmp_path / "a-file").write_text("mine")
    base = {"weights": str(tiny_ckpt), "data": tiny_data, "imgsz": 64, "run_dir": str(tmp_path / "new")}
    for bad, message in (
        ({"weights": str(inside), "run_dir": str(tmp_path / "run")}, "is inside --run-dir .* copy it out of there"),
        ({"run_dir": str(tmp_path / "a-file")}, "is an existing file, not a folder"),
        ({"train_args": {"lr0": "abc"}}, "--train-args: 'lr0=abc' is of invalid type str"),
        ({"train_args": {"lrr0": 0.01}}, "--train-args: 'lrr0' is not a valid YOLO argument"),
        ({"weights": "yolov8n-cls.yaml"}, "is a classify model: yoloslim trains the tasks"),
    ):
        with pytest.raises(ValueError, match=message):
            run_pipeline(PipelineConfig(**{**base, **bad}))
    assert inside.read_bytes() == tiny_ckpt.read_bytes() and sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "normal"
    ]
    assert (tmp_path / "a-file").read_text() == "mine" and not (tmp_path / "new").exists()


def test_more_calibration_images_than_the_set_has_are_said(tiny_ckpt, tiny_data, tmp_path) -> None:
    """The repair calibrates on every training image there is when asked for more, and says how many it used."""
    with _warnings() as warned:
        steps.prune(
            tiny_ckpt,
            ratio=0.4,
            save_dir=tmp_path,
            data=tiny_data,
            validate_pruned=False,
            how=Repair(reconstruct=False, bn=True, images=10_000),
            ranking=GAMMA,
        )
    said = [w for w in warned if "--calib-images 10000 asks for more than the 16 training images" in w]
    assert len(said) == 1 and "calibrating on all 16" in said[0]


def test_a_diverged_checkpoint_is_refused_by_name(tiny_ckpt, tiny_data, tmp_path) -> None:
    """A checkpoint with a NaN weight (a training that diverged) is refused where it would be ranked, repaired or
    exported, naming the tensor (was: 'probability tensor contains either inf, nan' from the repair's sampling, or
    'Taylor importance has no gradients yet'; the gamma histograms drew it). Resume checks still read its state."""
    model, _ = load_model(tiny_ckpt)
    model.model[2].cv2.bn.weight.data[0] = float("nan")
    diverged = save_checkpoint(model, tmp_path / "diverged.pt")
    message = r"has NaN or infinite values \(model.2.cv2.bn.weight\): its training diverged"
    with pytest.raises(ValueError, match=message):
        steps.prune(diverged, ratio=0.3, save_dir=tmp_path / "p", data=tiny_data, validate_pruned=False)
    with pytest.raises(ValueError, match=message):
        steps.gamma_report([diverged], out=tmp_path / "g.png")
    with pytest.raises(ValueError, match=message):
        steps.export(diverged, imgsz=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverged.pt"]
    assert readable(diverged)


def test_a_calibration_count_without_a_repair_is_refused() -> None:
    """`--calib-images` with every repair step off would be ignored (was: pruned without a word)."""
    with pytest.raises(ValueError, match="--calib-images 64 sets how many images the repair reads"):
        Repair(reconstruct=False, images=64)
    assert Repair(reconstruct=False, bn=True, images=64).images == 64 and not Repair(reconstruct=False).active


def test_an_artifact_path_taken_by_the_other_type_is_refused_before_any_work(pruned, tiny_ckpt, tmp_path) -> None:
    """A folder where the exported file goes (or a file where the OpenVINO folder goes) is refused before the export,
    and `prune --export` refuses it before pruning (was: the prune written, then "Is a directory" naming the
    export's temporary folder)."""
    (tmp_path / "p" / "pruned.onnx").mkdir(parents=True)
    argv = ["prune", "--weights", str(tiny_ckpt), "--prune-ratio", "0.3", "--importance", "gamma", "--no-val"]
    with pytest.raises(SystemExit, match=r"yoloslim prune: error: .*pruned.onnx is a folder, where the onnx file goes"):
        cli.main([*argv, "--no-reconstruct", "--save-dir", str(tmp_path / "p"), "--export", "onnx"])
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["pruned.onnx"]
    (tmp_path / "e").mkdir()
    checkpoint = Path(shutil.copy(pruned, tmp_path / "e" / "best.pt"))
    (tmp_path / "e" / "best.torchscript").mkdir()
    with pytest.raises(ValueError, match="best.torchscript is a folder, where the torchscript file goes"):
        steps.export(checkpoint, imgsz=64, kind="torchscript")
    (tmp_path / "e" / "best.torchscript").rmdir()
    (tmp_path / "e" / "best_openvino_model").touch()
    with pytest.raises(ValueError, match="best_openvino_model is a file, where the openvino folder goes"):
        Kind("openvino", 32).check_destination(checkpoint)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["best.pt", "best_openvino_model"]
