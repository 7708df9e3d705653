"""``fvloss compare`` over seeds: grouping runs by configuration, mean +- std, pooled pairs,
and ``--grid`` training a list of losses x seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_eval_compare import cache_scores, fake_run, make_images, write_pair_csv

from fvloss.cli import compare
from fvloss.eval.groups import config_key, group_runs, mean_std, pool_scores
from fvloss.eval.metrics import roc_auc
from fvloss.eval.protocols import read_pairs


def seeded_run(folder, loss, seed, **cfg):
    run = fake_run(folder, loss, loss)
    config = {"loss": loss, "data": "d", "seed": seed, "valid_pct": 0.1, "val_pairs": 100,
              "lr": 1e-3 * seed, "run_dir": str(folder), **cfg}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_group_runs_ignores_seed_lr_and_folders_but_not_settings():
    base = {"loss": "arcface", "arch": "resnet34", "img_size": 64}
    cfgs = [
        {**base, "seed": 43, "lr": 0.002, "run_dir": "b", "name": "arcface"},
        {**base, "seed": 42, "lr": 0.001, "run_dir": "a", "name": "arcface"},
        {**base, "seed": 42, "arch": "iresnet18", "name": "arcface"},
        {**base, "loss": "cosface", "seed": 42},
        {},  # an ONNX model: no config
    ]
    groups = group_runs(["r0", "r1", "r2", "r3", "m.onnx"], cfgs)
    assert [(g.label, g.members, g.seeds) for g in groups] == [
        ("arcface #1", [1, 0], [42, 43]),  # ordered by seed
        ("arcface #2", [2], [42]),  # another body: another configuration, same name
        ("cosface", [3], [42]),
        ("m.onnx", [4], [None]),
    ]
    assert config_key(cfgs[0]) == config_key(cfgs[1]) != config_key(cfgs[2])


def test_mean_std_and_pooling():
    assert mean_std([0.9, 0.8, None, float("nan")]) == (
        pytest.approx(0.85),
        pytest.approx(np.std([0.9, 0.8], ddof=1)),
        2,
    )
    assert mean_std([0.9]) == (0.9, None, 1) and mean_std([]) == (None, None, 0)
    s, same = pool_scores([np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])],
                          np.array([True, False]), 2)  # fmt: skip
    assert s.tolist() == [1.0, 2.0, 3.0, 4.0] and same.tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="need 3 runs"):
        pool_scores([s], same, 3)


@pytest.fixture()
def four_runs(tmp_path):
    """softmax and arcface at seeds 1 and 2, cached scores on one pair file."""
    rel = make_images(tmp_path / "img", n_ids=8, per_id=5)
    csv = write_pair_csv(tmp_path / "dev.csv", rel, per_id=5)
    pairs = read_pairs(csv, tmp_path / "img")
    rng = np.random.default_rng(0)
    runs, scores = [], {}
    for loss, shift in (("softmax", 0.5), ("arcface", 2.0)):
        for seed in (1, 2):
            run = seeded_run(tmp_path / "runs" / f"{loss}-seed{seed}", loss, seed)
            s = rng.normal(0, 1, len(pairs)) + shift * pairs.same
            cache_scores(run, pairs, s, "dev")
            runs.append(run)
            scores[(loss, seed)] = s
    return tmp_path, csv, pairs, runs, scores


@pytest.mark.slow
def test_compare_reports_mean_std_over_seeds_and_pooled_bootstrap(four_runs, capsys):
    tmp, csv, pairs, runs, scores = four_runs
    out = tmp / "cmp"
    argv = [*map(str, runs), "--pairs", str(csv), "--root", str(tmp / "img"), "--out", str(out)]
    assert compare.main([*argv, "--bootstrap", "300"]) == 0
    md = capsys.readouterr().out
    assert "## Over seeds" in md
    line = next(x for x in md.splitlines() if x.startswith("| arcface | arcface | 1, 2 |"))
    aucs = [roc_auc(scores[("arcface", s)], pairs.same) for s in (1, 2)]
    assert f"{np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}" in line
    doc = json.loads((out / "compare.json").read_text())
    groups = {g["label"]: g for g in doc["groups"]}
    assert groups["softmax"]["seeds"] == [1, 2] and groups["arcface"]["auc"]["n"] == 2
    pooled = np.concatenate([scores[("arcface", 1)], scores[("arcface", 2)]])
    want = roc_auc(pooled, np.tile(pairs.same, 2))
    assert groups["arcface"]["pooled_auc"] == pytest.approx(want, abs=1e-12)
    assert "### Pooled AUC differences between configurations" in md
    assert any(x.startswith("| arcface − softmax") and "arcface better" in x
               for x in md.splitlines())  # fmt: skip
    assert (out / "roc_seeds.png").read_bytes()[:4] == b"\x89PNG"
    assert str(out / "roc_seeds.png") in doc["outputs"]


def test_grid_trains_each_loss_and_seed_keeps_finished_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_train(argv, prog=""):
        calls.append(argv)
        if "--resume" in argv:
            d = argv[argv.index("--resume") + 1]
            loss, seed = "softmax", 2
        else:
            d = argv[argv.index("--run-dir") + 1]
            loss, seed = argv[argv.index("--loss") + 1], int(argv[argv.index("--seed") + 1])
        if loss == "cosface":
            return 3  # diverged: no metrics.json
        shutil.rmtree(d, ignore_errors=True)
        seeded_run(Path(d), loss, seed)  # the files a finished run leaves
        return 0

    monkeypatch.setattr("fvloss.cli.compare.train_main", fake_train)
    out = tmp_path / "grid"
    done = out / "arcface-seed1"
    seeded_run(done, "arcface", 1)  # finished before: kept, not retrained
    half = out / "softmax-seed2"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # interrupted: resumed
    argv = ["--grid", "softmax,arcface,cosface", "--seeds", "1,2", "--out", str(out),
            "--bootstrap", "0", "--", "--config", "exp.toml", "--epochs", "2"]  # fmt: skip
    assert compare.main(argv) == 0
    trained = [(a[a.index("--loss") + 1], a[a.index("--seed") + 1]) for a in calls
               if "--loss" in a]  # fmt: skip
    assert trained == [("softmax", "1"), ("cosface", "1"), ("arcface", "2"), ("cosface", "2")]
    assert ["--resume", str(half)] in calls
    first = calls[0]
    assert first[:4] == ["--config", "exp.toml", "--epochs", "2"]
    assert first[first.index("--run-dir") + 1] == str(out / "softmax-seed1")
    doc = json.loads((out / "compare-metrics" / "compare.json").read_text())
    assert {g["label"]: g["seeds"] for g in doc["groups"]} == {"softmax": [1, 2],
                                                               "arcface": [1, 2]}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "softmax,tripletface"], "unknown losses ['tripletface']"),
        (["--grid", "softmax", "--seeds", "a,b"], "--seeds: integers"),
        (["--grid", "softmax", "--", "--seed", "3"], "sets --loss, --seed and --run-dir"),
        (["--", "--epochs", "2"], "settings after `--` are for --grid"),
        ([], "give run folders, or --grid"),
    ],
)
def test_grid_bad_input(argv, message, capsys):
    assert compare.main(argv) == 2
    assert message in capsys.readouterr().err
