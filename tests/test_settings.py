"""settings.py is the one home of every setting: the flags, the Ultralytics arguments and the pipeline's fields all
come from it, and the package keeps the shape the architecture issue set (layers, function sizes)."""

from __future__ import annotations

import ast
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from ultralytics.utils import DEFAULT_CFG_DICT

from yoloslim import settings
from yoloslim.cli import COMMANDS, parser_for
from yoloslim.pipeline import PipelineConfig

PACKAGE = Path(settings.__file__).parent


def test_every_command_takes_exactly_its_settings_with_their_defaults() -> None:
    for command in COMMANDS:
        parser = parser_for(command)
        dests = {a.dest for a in parser._actions if a.dest not in ("help",)}
        assert dests == set(settings.flag_names(command)), command
        defaults = vars(parser.parse_args([]))
        for s in settings.SETTINGS:
            if command in s.commands:
                expected = s.default_for(command)
                assert defaults[s.name] == (list(expected) if isinstance(expected, tuple) else expected), (command, s)


def test_a_script_default_overrides_the_table() -> None:
    assert parser_for("prune", prune_ratio=0.3).parse_args([]).prune_ratio == 0.3
    assert parser_for("prune").parse_args([]).round_to == settings.SCRIPT_ROUND_TO


def test_prune_reconstructs_unless_told_not_to() -> None:
    """The repair is on by default (`--reconstruct` still parses); `--no-reconstruct` turns it off."""
    prune = parser_for("prune")
    assert prune.parse_args([]).reconstruct is True and prune.parse_args(["--reconstruct"]).reconstruct is True
    assert prune.parse_args(["--no-reconstruct"]).reconstruct is False


def test_slim_args_are_registered_with_ultralytics_at_the_table_defaults() -> None:
    assert set(settings.SLIM_ARGS) == {"sr", "sparsity", "target_gflops", "importance", "streams", "round_to"} | {
        "finetune",
        "lr_scale",
    }
    for key, default in settings.SLIM_ARGS.items():
        assert DEFAULT_CFG_DICT[key] == default, key


def test_pipeline_config_is_the_tables_pipeline_settings() -> None:
    names = [f.name for f in fields(PipelineConfig)]
    assert names == [s.name for s in settings.SETTINGS if "pipeline" in s.commands and s.name != "no_compare"]
    config = PipelineConfig()
    for s in settings.SETTINGS:
        if s.name in names:
            assert getattr(config, s.name) == s.default_for("pipeline"), s.name
    assert set(settings.STAGE_SETTINGS) <= set(names)
    assert "lr_scale" not in settings.RESERVED and {"sr", "target_gflops", "round_to", "data"} <= settings.RESERVED
    assert PipelineConfig().train_args is not PipelineConfig().train_args  # a fresh dict each


def test_flags_refuse_bad_values_with_the_settings_own_check(capsys) -> None:
    parser = parser_for("sparse")
    for argv, message in (
        (["--sparsity", "1.5"], "sparsity=1.5 must be in [0, 1)"),
        (["--round-to", "0"], "round_to=0 must be a whole number >= 1"),
        (["--importance", "nope"], "importance='nope' must be one of"),
        (["--sparsity", "0.5", "--target-gflops", "0.4"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert message in capsys.readouterr().err.splitlines()[-1], argv


def test_list_and_dict_flags() -> None:
    """Tuple settings read their items by their own kind, and a mutable default is never shared between parses."""
    pipeline = parser_for("pipeline")
    assert pipeline.parse_args(["--deploy", "onnx-int8", "openvino"]).deploy == ["onnx-int8", "openvino"]
    assert pipeline.parse_args(["--ratios", "0.3", "0.5"]).ratios == [0.3, 0.5]
    first = pipeline.parse_args([])
    config = PipelineConfig(**{f.name: getattr(first, f.name) for f in fields(PipelineConfig)})
    assert config.train_args == {} and config.deploy == () and config.ratios == (0.2, 0.4, 0.6, 0.8)
    config.train_args["nbs"] = 64  # the config's own dict: neither the parser's default nor the table's changes
    assert pipeline.parse_args([]).train_args == {} and parser_for("pipeline").parse_args([]).train_args == {}
    given = pipeline.parse_args(["--train-args", "nbs=16", "optimizer=SGD"])
    assert PipelineConfig(train_args=given.train_args).train_args == {"nbs": 16, "optimizer": "SGD"}
    with pytest.raises(TypeError):
        PipelineConfig("data.yaml")  # keyword-only: a positional value would land in another field


def test_min_keep_is_a_share_in_every_layer() -> None:
    prune = parser_for("prune")
    assert prune.parse_args(["--min-keep", "0"]).min_keep == 0.0
    with pytest.raises(SystemExit):
        prune.parse_args(["--min-keep", "2"])
    with pytest.raises(ValueError, match="min_keep=2 must be a share in"):
        settings.check_min_keep(2)


def test_later_stage_settings_come_from_the_table() -> None:
    assert settings.LATER_SETTINGS == {"distill": False, "path": "slim"}
    assert set(settings.LATER_SETTINGS) <= set(settings.STAGE_SETTINGS)


def test_check_values_normalises_and_refuses() -> None:
    config = PipelineConfig(ratios=[0.5], sr="0.02")
    settings.check_values("pipeline", config)
    assert config.ratios == (0.5,) and config.sr == 0.02
    with pytest.raises(ValueError, match="prune ratio 1.2 must be in"):
        settings.check_values("pipeline", PipelineConfig(ratios=(0.2, 1.2)))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            names.add(node.module if node.module.startswith("yoloslim") else node.module.split(".")[0])
            if node.module == "yoloslim":
                names |= {f"yoloslim.{a.name}" for a in node.names}
    return names


def test_the_pipeline_speaks_only_through_steps_report_settings_and_atomic() -> None:
    allowed = {"yoloslim", "yoloslim.steps", "yoloslim.report", "yoloslim.settings", "yoloslim.atomic"}
    imported = _imports(PACKAGE / "pipeline.py")
    assert {m for m in imported if m.startswith("yoloslim")} <= allowed
    assert {m for m in imported if not m.startswith("yoloslim")} <= set(sys.stdlib_module_names)


def test_settings_import_nothing_of_the_package_at_load() -> None:
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(not (getattr(n, "module", "") or "").startswith("yoloslim") for n in top)


def test_functions_are_short_and_public_ones_take_few_positional_arguments() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                assert node.name.startswith("_") or len(positional) <= 6, f"{path.name}:{node.name}"


def test_every_public_function_class_and_method_has_a_docstring() -> None:
    missing = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            members = node.body if isinstance(node, ast.ClassDef) and not node.name.startswith("_") else []
            for n in [node, *members]:
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_"):
                    if not ast.get_docstring(n):
                        missing.append(f"{path.name}:{n.name}")
    assert not missing, f"no docstring: {missing}"


def _package_imports(path: Path) -> set[str]:
    """The yoloslim modules `path` imports at any depth (function-level too), not counting type-only imports."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for b in node.body
        for n in ast.walk(b)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("yoloslim."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "yoloslim":
            found |= {a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("yoloslim.")}
    return found - {path.stem}


def _design_layers() -> dict[str, int]:
    """Module -> its row in DESIGN's "Layers" table (0 is the foundation)."""
    text = (PACKAGE.parent / "docs" / "DESIGN.md").read_text().split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[2] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    return {m.strip().replace("\\_", "_"): i for i, row in enumerate(rows) for m in row.split(",")}


def test_imports_run_one_way_through_the_layers_of_design() -> None:
    """Every module is in DESIGN's layer table, and every import (function-level too) goes to its own layer or one
    above it: no cycles (the layered graph has none within a layer either) and no arrow back up the house."""
    layers = _design_layers()
    graph = {p.stem: _package_imports(p) for p in PACKAGE.glob("*.py")}
    assert set(graph) == set(layers), "every module has one row in DESIGN's Layers table"
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps if layers[d] > layers[m]]
    assert not upward, f"imports from a lower layer to a higher one: {upward}"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_settings_import_nothing_of_the_package_at_any_depth() -> None:
    assert _package_imports(PACKAGE / "settings.py") == set()
