"""``nncore auto``: every bad option is a one-line error before any training."""
from __future__ import annotations

import pytest

from nncore.cli import main

pytest.importorskip("optuna")


@pytest.fixture(autouse=True)
def private_folder(tmp_path, monkeypatch, no_training):
    monkeypatch.setenv("NNCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--flops-budget", "0"], "--flops-budget must be a ratio in (0, 1), got 0.0"),
    (["--params-budget", "0"], "--params-budget must be a ratio in (0, 1), got 0.0"),
    (["--flops-budget", "1.5"], "--flops-budget must be a ratio in (0, 1), got 1.5"),
    (["--max-sparsity", "1"], "--max-sparsity must be in (0, 1), got 1.0"),
    (["--trials", "0"], "--trials must be >= 1, got 0"),
    (["--storage", "nncore.db"], "--storage 'nncore.db' is not a database URL, e.g. sqlite:///nncore-auto.db"),
    (["--output", "."], "--output '.' is a directory; give a file name, e.g. auto_config.json"),
    (["--algo", "admm"], "--algo 'admm': ADMMPruner needs pruning_epochs, pruning_rounds, trainer, verbose; nncore "
                         "auto prunes one copy per trial and takes one-shot pruners only (e.g. l1, l2, fpgm, level)"),
    (["--algo", "agp"], "--algo 'agp': nncore auto searches one 'sparsity' per layer, which AGPPruner's config_list "
                        "does not take"),
])
def test_bad_options_are_one_line_errors_before_training(args, message, capsys) -> None:
    status = main(["auto", "--no-cache", *args])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"nncore auto: error: {message}"
