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


def test_grid_is_a_study_each_loss_and_seed_once_kept_when_done(tmp_path, monkeypatch):
    """--grid runs on the study engine (Optuna's grid sampler): one run per loss x seed in
    OUT/trials/<loss>-seed<seed>, a failing one left out and said so, a rerun trains nothing."""
    pytest.importorskip("optuna")
    calls = []

    def fake_train(cfg, source, cbs=()):
        calls.append(cfg)
        if cfg.loss == "cosface":
            raise ValueError("diverged")
        d = Path(cfg.run_dir)
        shutil.rmtree(d, ignore_errors=True)
        seeded_run(d, cfg.loss, cfg.seed, name=cfg.name, epochs=cfg.epochs)
        return {"final": {"auc": 0.9}}

    monkeypatch.setattr("fvloss.study.engine.run", fake_train)
    exp = tmp_path / "exp.toml"
    exp.write_text("img_size = 48\n")
    out = tmp_path / "grid"
    argv = ["--grid", "softmax,arcface,cosface", "--seeds", "1,2", "--out", str(out),
            "--bootstrap", "0", "--", "--config", str(exp), "--epochs", "2"]  # fmt: skip
    assert compare.main(argv) == 0
    trained = sorted((c.loss, c.seed) for c in calls)
    assert trained == [(loss, s) for loss in ("arcface", "cosface", "softmax") for s in (1, 2)]
    for c in calls:
        assert c.img_size == 48 and c.epochs == 2 and c.name == c.loss  # file, then flags
        assert c.run_dir == str(out.resolve() / "trials" / f"{c.loss}-seed{c.seed}")
    assert (out / "study.db").is_file()
    doc = json.loads((out / "compare-metrics" / "compare.json").read_text())
    assert {g["label"]: g["seeds"] for g in doc["groups"]} == {"softmax": [1, 2],
                                                               "arcface": [1, 2]}  # fmt: skip
    calls.clear()
    assert compare.main(argv) == 0  # finished runs kept; failed ones are not retried
    assert calls == []


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


@pytest.mark.slow
def test_a_grid_run_equals_the_same_run_trained_alone(tiny_synthetic, tmp_path):
    """The study engine adds nothing to a run: --grid's softmax seed 3 has the weights of
    ``fvloss train --loss softmax --seed 3`` with the same settings."""
    pytest.importorskip("optuna")
    import torch

    from fvloss.cli import train

    flags = ["--data", str(tiny_synthetic), "--img-size", "32", "--arch", "resnet18",
             "--emb-dim", "16", "--bs", "16", "--val-pairs", "60", "--workers", "0", "--log",
             "none", "--guard", "false", "--lr", "1e-3", "--epochs", "1", "--threads", "1"]  # fmt: skip
    out = tmp_path / "grid"
    argv = ["--grid", "softmax", "--seeds", "3", "--out", str(out), "--bootstrap", "0", "--"]
    assert compare.main([*argv, *flags]) == 0
    alone = tmp_path / "alone"
    assert train.main([*flags, "--loss", "softmax", "--seed", "3", "--run-dir", str(alone)]) == 0
    a = torch.load(out / "trials" / "softmax-seed3" / "model.pth", weights_only=True)
    b = torch.load(alone / "model.pth", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
