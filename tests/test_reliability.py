"""Bad inputs and silent no-ops found in review: each fails loudly, says what to do, and never trains on or
modifies the user's weights."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from yoloslim import YOLO, Pruner, UnsupportedModuleError, build_graph, prunable_bn_names, steps
from yoloslim.checkpoint import load_model, save_checkpoint

from .conftest import GAMMA, TINY, build_model, train_interrupted


@pytest.fixture(scope="module")
def pruned(tiny_ckpt, tmp_path_factory) -> Path:
    return steps.prune(tiny_ckpt, ratio=0.4, save_dir=tmp_path_factory.mktemp("pruned"))


@pytest.mark.parametrize("args", [{"sr": 0.01}, {"sparsity": 0.5}, {"finetune": True}])
def test_stock_trainer_refuses_slimming_arguments(tiny_data, runs, args) -> None:
    """After `import yoloslim`, stock ultralytics.YOLO would accept sr / sparsity / finetune and ignore them."""
    from ultralytics import YOLO as StockYOLO

    name = f"stock-{next(iter(args))}"
    with pytest.raises(ValueError, match="would be ignored by Ultralytics' own DetectionTrainer.*yoloslim"):
        StockYOLO("yolov8n.yaml").train(data=tiny_data, epochs=1, project=str(runs), name=name, **args, **TINY)
    # Ultralytics makes the run folder and args.yaml before any trainer callback; no epoch is trained
    assert not (runs / name / "results.csv").exists() and not list((runs / name).rglob("*.pt"))


def test_fused_model_is_a_clear_error() -> None:
    model = build_model().fuse()
    for call in (build_graph, prunable_bn_names, Pruner):
        with pytest.raises(UnsupportedModuleError, match="fused"):
            call(model)


def test_plan_that_empties_a_group_is_refused() -> None:
    model = build_model()
    pruner = Pruner(model, GAMMA)
    plan = pruner.plan(0.3)
    name = next(g.name for g in pruner.graph.prunable if g.halves == 1)
    bad = type(plan)({**plan.keep, name: []}, plan.threshold, plan.ratio)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="keeps none of its"):
        pruner.apply(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # untouched


def test_old_checkpoint_ch_key_is_read(tmp_path) -> None:
    """Checkpoints older than Ultralytics 8.3 say `ch`, not `channels`: a 1-channel model is traced as one."""
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov8n.yaml", ch=1, nc=2, verbose=False)
    model.yaml = {k: v for k, v in model.yaml.items() if k != "channels"} | {"ch": 1}
    path = save_checkpoint(model, tmp_path / "old.pt")
    loaded, _ = load_model(path)
    graph = build_graph(loaded)
    assert len(graph.consumers["model.0.conv"].inputs) == 1
    out = steps.prune(
        path, ratio=0.3, save_dir=tmp_path / "pruned", ranking=GAMMA
    )  # an untrained model: no data to rank by
    small, _ = load_model(out)
    assert small.model[0].conv.in_channels == 1 and small(torch.rand(1, 1, 64, 64))[0].shape[1] == 4 + 2


def test_sparsity_on_a_pruned_model_is_refused(pruned, tiny_data, runs) -> None:
    with pytest.raises(ValueError, match="already pruned"):
        YOLO(pruned).train(data=tiny_data, epochs=1, sparsity=0.3, project=str(runs), name="pruned-sparse", **TINY)
    assert not (runs / "pruned-sparse").exists()


def test_finetune_recorded_as_it_happens(pruned, tiny_data, runs) -> None:
    """A pruned model trained without finetune=True is fine-tuned as it is, and args.yaml says so."""
    YOLO(pruned).train(data=tiny_data, epochs=1, project=str(runs), name="recorded", **TINY)
    assert yaml.safe_load((runs / "recorded" / "args.yaml").read_text())["finetune"] is True
    _, ckpt = load_model(runs / "recorded" / "weights" / "last.pt")
    assert ckpt["train_args"]["finetune"] is True


STOCK_RESUME = r"""
import sys
from ultralytics import YOLO
try:
    YOLO(sys.argv[1]).train(resume=True)
except KeyError as e:
    print("REFUSED", e)
"""


@pytest.mark.slow
def test_stock_resume_of_a_pruned_run_fails_loudly(pruned, tiny_data, runs) -> None:
    """Stock Ultralytics would rebuild the full-width network and keep only the weights that fit: it stops instead,
    while stock predict still works on the same checkpoint and yoloslim resumes it."""
    train_interrupted(YOLO(pruned), data=tiny_data, epochs=2, project=str(runs), name="stock-resume", **TINY)
    last = runs / "stock-resume" / "weights" / "last.pt"
    out = subprocess.run([sys.executable, "-c", STOCK_RESUME, str(last)], capture_output=True, text=True, timeout=300)
    assert "REFUSED" in out.stdout and "train it with yoloslim.YOLO" in out.stdout, out.stderr[-2000:]
    resumed = YOLO(last)
    resumed.train(resume=True)
    assert resumed.trainer.start_epoch == 1


def test_penalty_that_reaches_no_gamma_fails_loudly(tiny_data, runs) -> None:
    """If the prunable gammas found at setup are no longer the trained parameters, sparsity training stops."""
    model = YOLO("yolov8n.yaml")

    def replace_parameters(trainer) -> None:
        for m in trainer.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight = torch.nn.Parameter(m.weight.detach().clone())

    model.add_callback("on_train_start", replace_parameters)
    with pytest.raises(RuntimeError, match="reached none of the prunable gammas"):
        model.train(data=tiny_data, epochs=1, sr=0.01, project=str(runs), name="stale", **TINY)


def test_checkpoint_write_is_durable_and_leaves_the_umask_alone(monkeypatch, tmp_path) -> None:
    """save_checkpoint flushes the bytes to disk before the rename and never reads or sets the umask."""
    import os

    import yoloslim.atomic as atomic

    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    monkeypatch.setattr(os, "umask", lambda mask: pytest.fail("the process umask was touched"))
    path = save_checkpoint(build_model(), tmp_path / "m.pt")
    assert calls == ["fsync", "replace", "fsync"] and load_model(path)[0] is not None  # file, rename, folder
    (tmp_path / "probe").touch()  # any new file: the process umask applies as usual
    assert path.stat().st_mode & 0o777 == (tmp_path / "probe").stat().st_mode & 0o777


def test_repo_stands_on_its_own() -> None:
    """The design notes the code cites, every lab file RESULTS.md links to, and the ships set the lab notes use are in
    the repo."""
    root = Path(__file__).resolve().parent.parent
    for doc in ("DESIGN.md", "RESULTS.md", "RELIABILITY.md", "SPARSITY.md"):
        assert (root / "docs" / doc).is_file(), doc
    ships = yaml.safe_load((root / "datasets" / "ships" / "ships.yaml").read_text())
    for split, count in (("train", 222), ("val", 95)):
        images = list((root / "datasets" / "ships" / ships[split]).glob("*.jpg"))
        labels = {p.stem for p in (root / "datasets" / "ships" / split / "labels").glob("*.txt")}
        assert len(images) == count and {p.stem for p in images} == labels
    assert "CC BY 4.0" in (root / "datasets" / "ships" / "README.md").read_text()
    results = (root / "docs" / "RESULTS.md").read_text()
    linked = re.findall(r"\]\((lab/[^)]+\.md)\)", results)
    assert linked and all((root / "docs" / link).is_file() for link in linked), linked
    assert "datasets/ships/ships.yaml" in (root / "docs" / "lab" / "ships-yolov8n.md").read_text()
    assert "datasets/hardhat" in results


def test_every_reliability_row_names_a_test_that_exists() -> None:
    """docs/RELIABILITY.md: its rows are numbered without a gap and counted right in its summary, each row's last
    column names a test (or says "same", the row above's), and every test it names is defined in the file it names."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    numbers = [int(line.split("|")[1]) for line in rows]
    cut = numbers.index(1, 1)  # the faults start again at 1
    inputs, faults = numbers[:cut], numbers[cut:]
    assert inputs == list(range(1, cut + 1)) and faults == list(range(1, len(faults) + 1))
    assert f"**{len(inputs)} bad inputs, {len(faults)} injected faults: {len(rows)} rows," in text
    for line in rows:
        cited = re.findall(r"`(test_\w+\.py)::(test_\w+)", line.rsplit("|", 2)[-2])
        assert cited or line.rsplit("|", 2)[-2].strip() == "same", line[:80]
        for module, test in cited:
            assert re.search(rf"^def {test}\(", (root / "tests" / module).read_text(), re.M), f"{module}::{test}"


@pytest.mark.slow
def test_every_pipeline_flag_shows_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "yoloslim", "pipeline", "--help"], capture_output=True, text=True, timeout=120
    )
    text = " ".join(out.stdout.split())
    for flag in ("--imgsz", "--batch", "--epochs-normal", "--epochs-sparse", "--epochs-finetune", "--sr", "--sparsity"):
        after = text.split(f" {flag} ", 1)[1]
        assert "(default:" in after.split(" --", 1)[0], flag


def _doc_commands(root: Path) -> dict[str, set[tuple[str, str]]]:
    """Every command of the docs' shell blocks (`python SCRIPT.py ...`, `yoloslim COMMAND ...`, continuation lines
    joined): the command -> the (doc, flag) pairs its uses pass."""
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted((root / "docs" / "lab").glob("*.md"))]
    commands: dict[str, set[tuple[str, str]]] = {}
    for doc in docs:
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", doc.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                found = re.match(r"^(?:.*?&&\s*)?(python (?:bench/)?[\w-]+\.py|yoloslim \w+)(.*)$", line.split(" #")[0])
                if found:
                    flags = re.findall(r"(?<!\S)(--[\w-]+)", found.group(2))
                    where = str(doc.relative_to(root))
                    commands.setdefault(found.group(1), set()).update((where, f) for f in flags)
    return commands


@pytest.mark.slow
def test_every_command_in_the_docs_takes_the_flags_they_pass() -> None:
    """Each script or `yoloslim` command that README.md and docs/ show runs `--help`, and every flag the docs pass it
    is one it takes; a bench script that no longer exists is named by its doc as folded into another (marked)."""
    root = Path(__file__).resolve().parent.parent
    commands = _doc_commands(root)
    assert {"python bench/compare.py", "yoloslim prune"} <= set(commands)
    for command, used in sorted(commands.items()):
        words = command.split()
        if words[0] == "python" and not (root / words[1]).is_file():
            docs = {doc for doc, _ in used}
            assert all(f"`{words[1]}` was folded into" in (root / doc).read_text() for doc in docs), (command, docs)
            continue
        argv = [sys.executable, words[1]] if words[0] == "python" else [sys.executable, "-m", "yoloslim", words[1]]
        out = subprocess.run([*argv, "--help"], capture_output=True, text=True, cwd=root)
        assert out.returncode == 0, (command, out.stderr[-500:])
        unknown = sorted((doc, flag) for doc, flag in used if not re.search(rf"{flag}(?![\w-])", out.stdout))
        assert not unknown, f"{command}: flags it does not take, by doc: {unknown}"
