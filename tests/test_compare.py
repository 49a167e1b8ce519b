"""bench/compare.py: arms x seeds, paired intervals, resuming and refusing a folder made with other settings."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
from ultralytics.utils.callbacks import base

from yoloslim.checkpoint import finished_training

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare  # noqa: E402
from common import emit, paired_interval, write_csv  # noqa: E402


def test_paired_interval_matches_the_t_formula() -> None:
    mean, lo, hi = paired_interval([0.01, 0.03, 0.02])
    assert mean == pytest.approx(0.02)
    assert hi - mean == pytest.approx(4.302653 * 0.01 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert paired_interval([0.5]) == (0.5, 0.5, 0.5)


def test_arm_parsing() -> None:
    arm = compare.Arm.parse("slim-lr=slim:lr_scale=0.1,importance=gamma,streams=true")
    assert (arm.name, arm.recipe, arm.settings) == (
        "slim-lr",
        "slim",
        {"lr_scale": 0.1, "importance": "gamma", "streams": True},
    )
    assert compare.Arm.parse("continue") == compare.Arm("continue", "continue", {})
    assert compare.Arm.parse("slim:lr_scale=0.1") == compare.Arm("slim", "slim", {"lr_scale": 0.1})  # no NAME=
    with pytest.raises(Exception, match="recipe must be one of"):
        compare.Arm.parse("x=bogus")


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--arms", "s=slim:foo=1"], "'foo' is not a valid YOLO argument"),
        (["--arms", "s=slim:target=2"], "must be in \\(0, 1\\]"),
        (["--arms", "s=slim:sparse_target=0"], "prunes nothing"),
        (["--arms", "o=oneshot:epochs=0"], "epochs=0 must be a whole number"),
        (["--arms", "s=slim:epochs=3"], "a slim arm trains --sparse-epochs \\+ --finetune-epochs"),
        (["--arms", "s=slim:lr0=abc"], "'lr0=abc' is of invalid type"),
        (["--target", "1.5"], "argument --target: .*must be in"),
        (["--normal", "missing.pt"], "--normal '.*missing.pt' is not a file"),
        (["--arms", "continue", "slim", "slim:importance=gamma"], r"arm name\(s\) \['slim'\] given twice"),
    ],
)
def test_a_bad_run_is_refused_before_its_folder_records_it(bad, message, tiny_ckpt, tiny_data, tmp_path, capsys):
    """Each used to be a traceback after compare.json recorded the run, so the corrected rerun was refused as 'made
    with other settings'. Now argparse refuses it in one line and the folder is never made."""
    run_dir = tmp_path / "runs"
    good = ["--normal", str(tiny_ckpt), "--data", tiny_data, "--run-dir", str(run_dir), "--arms", "continue"]
    with pytest.raises(SystemExit) as stopped:
        compare.main(good + bad)  # a flag given again replaces its first value
    assert stopped.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not run_dir.exists()  # nothing recorded: the corrected run starts in a clean folder


def test_a_bench_table_is_written_only_to_a_markdown_file(tiny_ckpt, tiny_data, tmp_path, capsys) -> None:
    """`--out` the checkpoint an arm starts from, or `x.csv` (the CSV beside it would be the same file): refused by
    argparse before any run, the checkpoint untouched (was: the table written over it after every arm had run)."""
    before = tiny_ckpt.read_bytes()
    good = ["--normal", str(tiny_ckpt), "--data", tiny_data, "--run-dir", str(tmp_path / "runs"), "--arms", "continue"]
    for out in (str(tiny_ckpt), str(tmp_path / "table.csv")):
        with pytest.raises(SystemExit) as stopped:
            compare.main([*good, "--out", out])
        assert stopped.value.code == 2 and "is not a .md file" in capsys.readouterr().err
    assert tiny_ckpt.read_bytes() == before and not (tmp_path / "runs").exists()


def test_a_sparse_target_zeroes_further_than_the_arm_prunes(tmp_path, monkeypatch) -> None:
    """`sparse_target` drives the sparse stage only: the pruning still goes to the arm's target (--target here);
    an arm's own `sr` replaces --sr."""
    calls = []
    monkeypatch.setattr(compare.steps, "train", lambda weights, **kw: calls.append(("train", kw)))
    monkeypatch.setattr(compare.steps, "prune", lambda weights, **kw: calls.append(("prune", kw)))
    a = compare.argparse.Namespace(
        normal=tmp_path / "normal.pt",
        data="d.yaml",
        imgsz=64,
        target=0.4,
        sr=1e-2,
        sparse_epochs=2,
        finetune_epochs=1,
        train_args={},
        run_dir=tmp_path / "runs",
    )
    compare.Comparison(a).run(compare.Arm.parse("one=slim:sparse_target=0.3"), seed=0)
    (_, sparse), (_, prune), (_, finetune) = calls
    assert sparse["target_gflops"] == 0.3 and "sparse_target" not in sparse
    assert prune["target"] == ("gflops", 0.4)
    assert finetune["finetune"] and "target_gflops" not in finetune and "sparse_target" not in finetune
    calls.clear()
    compare.Comparison(a).run(compare.Arm.parse("slim"), seed=1)
    assert calls[0][1]["target_gflops"] == 0.4  # without it, one number drives both stages
    assert calls[0][1]["sr"] == 1e-2  # --sr, unless the arm sets its own
    calls.clear()
    compare.Comparison(a).run(compare.Arm.parse("l1off=slim:sr=0"), seed=1)
    assert calls[0][1]["sr"] == 0


def test_oneshot_repairs_from_the_data_and_may_train_fewer_epochs(tmp_path, monkeypatch) -> None:
    """`oneshot` prunes the normal model with the repair (the data given to the prune), `prune-finetune` without;
    both fine-tune all the epochs unless the arm's `epochs` says fewer."""
    calls = []
    monkeypatch.setattr(compare.steps, "train", lambda weights, **kw: calls.append(("train", kw)))
    monkeypatch.setattr(compare.steps, "prune", lambda weights, **kw: calls.append(("prune", kw)))
    a = compare.argparse.Namespace(
        normal=tmp_path / "normal.pt", data="d.yaml", imgsz=64, target=0.7, sr=1e-2, sparse_epochs=2,
        finetune_epochs=1, train_args={}, run_dir=tmp_path / "runs",
    )
    compare.Comparison(a).run(compare.Arm.parse("oneshot"), seed=0)
    compare.Comparison(a).run(compare.Arm.parse("prune-finetune"), seed=0)
    compare.Comparison(a).run(compare.Arm.parse("os1=oneshot:epochs=1"), seed=0)
    compare.Comparison(a).run(compare.Arm.parse("continue"), seed=0)
    compare.Comparison(a).run(compare.Arm.parse("d1=continue:epochs=1"), seed=0)
    (_, oneshot), (_, tuned), (_, cut), _, _, (_, fewer), (_, ceiling), (_, ceiling1) = calls
    assert oneshot["data"] == "d.yaml" and cut["data"] is None and oneshot["target"] == ("gflops", 0.7)
    assert oneshot["how"].reconstruct and not oneshot["how"].bn
    assert tuned["epochs"] == calls[3][1]["epochs"] == 3 and tuned["finetune"] and fewer["epochs"] == 1
    assert ceiling["epochs"] == 3 and ceiling1["epochs"] == 1 and "finetune" not in ceiling1


@pytest.mark.slow  # trains: `-m "not slow"` leaves it out
def test_two_identical_arms_over_two_seeds(tiny_ckpt, tiny_data, tmp_path, monkeypatch) -> None:
    """Two arms that are the same run, 2 seeds of 1 epoch: a table of the right shape, an interval holding 0 (the
    differences are exactly 0), a CSV of every score; a rerun trains nothing; other settings are refused."""
    out = tmp_path / "table.md"
    argv = [
        "--normal",
        str(tiny_ckpt),
        "--data",
        tiny_data,
        "--imgsz",
        "64",
        "--sparse-epochs",
        "1",
        "--finetune-epochs",
        "0",
        "--arms",
        "continue",
        "again=continue",
        "--seeds",
        "0",
        "1",
        "--run-dir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
    ]
    scores = compare.main(argv)
    assert set(scores) == {"continue", "again"} and all(len(v) == 2 for v in scores.values())
    assert scores["continue"] == scores["again"]  # same seed, same settings, deterministic
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert len(lines) == 3 and all(line.count("|") == 6 for line in lines)  # header + 2 arms; 5 columns
    again = next(line for line in lines if line.startswith("| again"))
    assert "+0.00 [+0.00, +0.00]" in again
    with open(out.with_suffix(".csv"), newline="") as f:
        assert len(list(csv.DictReader(f))) == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare.steps, "train", no_training)
    assert compare.main(argv) == scores
    with pytest.raises(SystemExit, match="other settings"):
        compare.main([*argv[:-4], "--target", "0.5", *argv[-4:]])


@pytest.mark.slow  # trains: `-m "not slow"` leaves it out
def test_an_interrupted_stage_resumes_from_its_last_epoch(tiny_ckpt, tiny_data, tmp_path, monkeypatch) -> None:
    """A comparison killed after a stage's first epoch picks that stage up at its second epoch when run again."""

    class Stop(Exception):
        pass

    def stop(trainer) -> None:
        raise Stop

    args = ["--normal", str(tiny_ckpt), "--data", tiny_data, "--imgsz", "64", "--sparse-epochs", "2"]
    args += ["--finetune-epochs", "0", "--arms", "continue", "--seeds", "0", "--run-dir", str(tmp_path / "runs")]
    args += ["--out", str(tmp_path / "table.md")]
    saves = base.default_callbacks["on_model_save"]
    monkeypatch.setitem(base.default_callbacks, "on_model_save", [*saves, stop])
    with pytest.raises(Stop):
        compare.main(args)
    starts = []
    monkeypatch.setitem(base.default_callbacks, "on_model_save", saves)
    starts_at = [*base.default_callbacks["on_train_start"], lambda trainer: starts.append(trainer.start_epoch)]
    monkeypatch.setitem(base.default_callbacks, "on_train_start", starts_at)
    compare.main(args)
    assert starts == [1]  # resumed at its second epoch (0-based 1), not restarted
    assert finished_training(tmp_path / "runs" / "continue" / "seed0" / "continue" / "weights" / "last.pt")


def test_tables_replace_a_symlink_at_their_path_never_write_through_it(tmp_path) -> None:
    """`--out` may be a symlink (to a file the user keeps elsewhere): the Markdown and its CSV each replace the link
    with a file of their own, and the file it pointed to is untouched."""
    kept = tmp_path / "kept.txt"
    kept.write_text("mine")
    for name in ("table.md", "table.csv"):
        (tmp_path / name).symlink_to(kept)
    emit("caption", ["arm", "score"], [["a", "0.5"]], tmp_path / "table.md")
    write_csv(tmp_path / "table.csv", ["arm", "score"], [["a", "0.5"]])
    assert kept.read_text() == "mine"
    assert not (tmp_path / "table.csv").is_symlink() and (tmp_path / "table.csv").read_text() == "arm,score\na,0.5\n"
    assert not (tmp_path / "table.md").is_symlink() and "| a | 0.5 |" in (tmp_path / "table.md").read_text()
