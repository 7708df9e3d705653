"""Experiment tracking (--log): csv by default into the run folder, tensorboard when asked,
a clear error for a tracker whose package is missing."""

from __future__ import annotations

import csv
import importlib.util

import pytest
from test_recipes import argv, only_run_dir

from fvloss.callbacks.tracking import check_trackers
from fvloss.recipes import softmax


def test_a_run_logs_its_epochs_to_csv_by_default(tiny_synthetic, tmp_path):
    out = tmp_path / "runs"
    assert softmax.main(argv(tiny_synthetic, out, "--epochs", "2", "--lr", "1e-3")) == 0
    rows = list(csv.reader((only_run_dir(out) / "history.csv").open()))
    assert rows[0][:3] == ["epoch", "train_loss", "auc"] and [r[0] for r in rows[1:]] == ["0", "1"]


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed"
)
def test_tensorboard_writes_event_files_into_the_run(tiny_synthetic, tmp_path):
    out = tmp_path / "runs"
    assert (
        softmax.main(argv(tiny_synthetic, out, "--lr", "1e-3", "--log", "csv", "tensorboard")) == 0
    )
    run = only_run_dir(out)
    assert (
        list((run / "tensorboard").glob("events.out.tfevents.*"))
        and (run / "history.csv").is_file()
    )


def test_an_unknown_or_missing_tracker_is_an_error_before_the_data_scan(
    tmp_path, monkeypatch, capsys
):
    with pytest.raises(ValueError, match="unknown tracker 'mlflow'"):
        check_trackers(["mlflow"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ValueError, match="--log wandb needs the wandb package: pip install wandb"):
        check_trackers(["wandb"])
    missing = tmp_path / "no-such-data"  # the error comes first: nothing is scanned
    assert softmax.main(argv(missing, tmp_path / "runs", "--log", "wandb")) != 0
    assert "pip install wandb" in capsys.readouterr().err


def test_the_config_offers_exactly_the_trackers_there_are():
    # Config stays free of fastai imports (a fast --help), so it lists the names itself
    from dataclasses import fields

    from fvloss.callbacks.tracking import TRACKERS
    from fvloss.config import Config

    (log,) = [f for f in fields(Config) if f.name == "log"]
    assert tuple(log.metadata["choices"]) == TRACKERS
