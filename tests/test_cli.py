"""The nncore console script: list, schema, validate."""
from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from nncore.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_shows_every_registered_compressor(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["level"][1:] == ["pruner", "nncore.builtin_pruners.level.LevelPruner", "nncore"]
    assert rows["agp"][1] == "pruner"


def test_schema_prints_a_valid_json_schema(capsys):
    code, out, _ = run_cli(capsys, "schema", "agp")
    assert code == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "final_sparsity" in schema["items"]["properties"]


def test_validate_prints_the_resolved_layers(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"sparsity": 0.5, "op_types": ["Conv2d"]}, {"exclude": True, "op_names": ["conv1"]}]))
    code, out, _ = run_cli(capsys, "validate", str(config), "--algo", "level", "--model", "tests.conftest:make_tiny_cnn")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split() == ["conv2", "Conv2d", "0", '{"sparsity":', "0.5}"]
    assert lines[-1] == "valid: 1 layer(s) selected for 'level'"


def test_validate_on_the_builtin_default_model(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"sparsity": 0.5, "op_types": ["default"]}]))
    code, out, _ = run_cli(capsys, "validate", str(config), "--algo", "level")
    assert code == 0 and "layer(s) selected" in out


def test_an_invalid_config_exits_non_zero_with_every_error_and_no_traceback(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps([{"sparsity": 1.5, "op_types": ["Conv2d"], "extra": 1}, {"sparsity": 0.1, "op_names": ["nope"]}]))
    code, _, err = run_cli(capsys, "validate", str(config), "--algo", "level", "--model", "tests.conftest:make_tiny_cnn")
    assert code == 1
    assert "config_list[0].sparsity: 1.5 is greater than the maximum of 1" in err
    assert "config_list[0].extra: unknown key" in err
    assert "config_list[1].op_names: the model has no module named 'nope'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("model, message", [
    ("tests.conftest:no_such_factory", "module 'tests.conftest' has no attribute 'no_such_factory'"),
    ("no_such_module:build", "cannot import 'no_such_module'"),
    ("just_a_name", "expected module:callable"),
])
def test_a_missing_model_factory_is_one_line(capsys, tmp_path, model, message):
    config = tmp_path / "config.json"
    config.write_text("[]")
    code, _, err = run_cli(capsys, "validate", str(config), "--algo", "level", "--model", model)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_unknown_algorithm_and_broken_json_are_one_line_errors(capsys, tmp_path):
    config = tmp_path / "config.json"
    config.write_text("[{")
    code, _, err = run_cli(capsys, "validate", str(config), "--algo", "level")
    assert code == 2 and "not valid JSON" in err
    code, _, err = run_cli(capsys, "schema", "levle")
    assert code == 2 and "Did you mean 'level'?" in err


def test_the_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "nncore.cli", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "level" in result.stdout
