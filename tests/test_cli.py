"""The `fastis` command: argument errors, missing data, and a few-second demo run."""

from __future__ import annotations

import json
import math

import pytest
from data_files import fashion_like

from fastis import cli, datasets
from fastis.demo import DEFAULT_METHODS, DEMO_METHODS


@pytest.mark.parametrize("argv, message", [
    ([], "required"),
    (["train"], "invalid choice"),
    (["demo", "--seconds", "0"], "must be > 0"),
    (["demo", "--seconds", "abc"], "not a number"),
    (["demo", "--batch-size", "0"], "must be >= 1"),
    (["demo", "--methods", "bogus"], "invalid choice"),
    (["demo", "--device", "tpu"], "invalid choice"),
    (["bench", "sampler"], "invalid choice"),
])
def test_argument_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_stops_with_the_install_command(tmp_path, capsys):
    assert cli.main(["demo", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert datasets.FASHION_MNIST_INSTALL in capsys.readouterr().err
    assert not (tmp_path / "demo.png").exists()


def test_demo_runs_end_to_end_on_tiny_data(tmp_path, capsys):
    fashion_like(tmp_path / "data", train=640, test=200)
    out = tmp_path / "out"
    code = cli.main(["demo", "--data", str(tmp_path / "data"), "--epochs", "3",
                     "--evaluations", "2", "--batch-size", "32", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "time to uniform's best acc" in printed
    record = json.loads((out / "demo.json").read_text())
    assert [row["method"] for row in record["rows"]] == list(DEFAULT_METHODS)
    uniform = record["rows"][0]
    assert uniform["speedup"] == 1.0 and uniform["steps"] == 3 * 20  # 3 epochs of 640 / 32
    pruned = next(row for row in record["rows"] if row["method"] == "dynamic-pruning")
    assert pruned["backprops"] < uniform["backprops"]  # pruned epochs, the same count
    for row in record["rows"]:
        assert 0 <= row["test_accuracy"] <= 1 and math.isfinite(row["train_loss"])
    assert (out / "demo.png").stat().st_size > 10_000
    assert "| method |" in (out / "demo.md").read_text()


def test_demo_races_every_method_with_the_cnn(tmp_path):
    fashion_like(tmp_path / "data", train=320, test=100)
    out = tmp_path / "out"
    code = cli.main(["demo", "--data", str(tmp_path / "data"), "--model", "cnn", "--methods",
                     "all", "--seconds", "0.3", "--evaluations", "2", "--batch-size", "32",
                     "--quiet", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "demo.json").read_text())
    assert [row["method"] for row in record["rows"]] == list(DEMO_METHODS)
    assert all(row["backprops"] > 0 for row in record["rows"])
