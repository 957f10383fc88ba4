"""The nncore console script: list, schema, validate."""
from __future__ import annotations

import argparse
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


def test_version_and_python_dash_m(capsys):
    import nncore

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"nncore {nncore.__version__}\n"
    result = subprocess.run([sys.executable, "-m", "nncore", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == f"nncore {nncore.__version__}\n"


def test_every_help_shows_the_defaults():
    from nncore.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = "".join(sub.format_help().split())  # argparse wraps lines, even inside a word
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert f"(default:{action.default}" in text, (name, action.dest)
    assert "(default: 0.5)" in subparsers.choices["compress"].format_help()


def test_a_job_says_what_it_does_before_importing_torch(tmp_path):
    spy = """
import sys
real = sys.stderr
class Spy:
    first = None
    def write(self, text):
        if Spy.first is None and text.strip():
            Spy.first = text
            real.write(f"torch imported: {'torch' in sys.modules}\\n")
        return real.write(text)
    def flush(self):
        real.flush()
sys.stderr = Spy()
from nncore.cli import main
sys.exit(main(["compress", "--epochs", "-1", "--output", "out"]))
"""
    result = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = result.stderr.splitlines()
    assert lines[0] == "torch imported: False"
    assert lines[1] == "nncore compress: l1 pruning (sparsity 0.5) of DigitsCNN on digits, results in out/"
    assert lines[2] == "nncore compress: error: --epochs must be >= 0, got -1" and result.returncode == 2


def test_a_directory_given_as_a_config_file_is_named_a_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "validate", str(tmp_path), "--algo", "level")
    assert code == 2 and err == f"nncore validate: error: config file {str(tmp_path)!r} is a directory, not a file\n"
