"""``fvloss compare``: weighted AUC, the paired bootstrap, cached scores and the CLI."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fvloss import cli
from fvloss.cli import compare
from fvloss.cli.verify import main as verify_main
from fvloss.eval.bootstrap import (
    bootstrap_weights,
    choose_comparisons,
    paired_bootstrap,
    paired_bootstrap_hits,
    weighted_auc,
)
from fvloss.eval.metrics import roc_auc, verify_scores
from fvloss.eval.protocols import read_pairs
from fvloss.eval.report import load_scores, pairs_digest, write_outputs
from fvloss.eval.score import score_pairs

# ----------------------------------------------------------------------------- helpers


def scores_with_ties(rng, same, shift, decimals=1):
    """Scores where same pairs sit ``shift`` higher; rounded so that ties are common."""
    return np.round(rng.normal(0, 1, len(same)) + shift * same, decimals)


def explicit_auc(scores, same, counts):
    """AUC by sklearn on the data with pair ``k`` repeated ``counts[k]`` times."""
    idx = np.repeat(np.arange(len(scores)), counts.astype(int))
    return roc_auc_score(same[idx], scores[idx])


# ----------------------------------------------------------------------------- weighted AUC


def test_weighted_auc_equals_sklearn_on_explicit_resamples():
    rng = np.random.default_rng(0)
    same = rng.random(300) < 0.4
    s = scores_with_ties(rng, same, 0.8)
    assert len(np.unique(s)) < 100  # many ties: the half-counting matters
    assert weighted_auc(s, same, np.ones(len(s))) == pytest.approx(roc_auc(s, same), abs=1e-12)
    w = next(bootstrap_weights(same, 40, seed=3))
    got = weighted_auc(s, same, w)
    want = [explicit_auc(s, same, row) for row in w]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert np.std(got) > 0.005  # the resamples really differ
    # any integer weights, zeros included (not stratified: class totals vary per row)
    w = rng.integers(0, 4, size=(20, len(s)))
    np.testing.assert_allclose(
        weighted_auc(s, same, w), [explicit_auc(s, same, row) for row in w], atol=1e-9
    )
    w = np.ones(len(s))
    w[same] = 0
    assert np.isnan(weighted_auc(s, same, w))  # no same pair left: undefined, not 0


def test_bootstrap_weights_are_stratified_and_independent_of_block_size():
    same = np.r_[np.ones(7, bool), np.zeros(11, bool)][np.random.default_rng(1).permutation(18)]
    whole = np.concatenate(list(bootstrap_weights(same, 25, seed=5)))
    blocks = list(bootstrap_weights(same, 25, seed=5, chunk=4))
    assert [len(b) for b in blocks] == [4, 4, 4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    assert (whole[:, same].sum(1) == 7).all() and (whole[:, ~same].sum(1) == 11).all()
    assert not np.array_equal(whole, np.concatenate(list(bootstrap_weights(same, 25, seed=6))))
    assert len({tuple(r) for r in whole}) == 25


# ----------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_matches_a_slow_loop():
    rng = np.random.default_rng(2)
    same = rng.random(120) < 0.5
    runs = [scores_with_ties(rng, same, shift) for shift in (0.5, 1.0, 1.1)]
    n_boot = 60
    boot = paired_bootstrap(runs, same, n_boot=n_boot, seed=7, chunk=16)
    # the slow way: every resample spelled out as indices, every AUC by sklearn
    weights = np.concatenate(list(bootstrap_weights(same, n_boot, seed=7)))
    aucs = np.array([[explicit_auc(s, same, w) for w in weights] for s in runs])
    np.testing.assert_allclose(boot.aucs, aucs, atol=1e-9)
    observed = [roc_auc_score(same, s) for s in runs]
    np.testing.assert_allclose(boot.observed, observed, atol=1e-12)
    assert [(d.a, d.b) for d in boot.diffs] == choose_comparisons(observed)
    for d in boot.diffs:
        diff = aucs[d.a] - aucs[d.b]
        assert d.diff == pytest.approx(observed[d.a] - observed[d.b], abs=1e-12)
        lo, hi = np.percentile(diff, [2.5, 97.5])
        assert (d.ci_low, d.ci_high) == pytest.approx((lo, hi), abs=1e-9)
        assert d.p_le_0 == np.mean(diff <= 1e-12) and d.n_le_0 == int(np.sum(diff <= 1e-12))
    # same seed, same answer whatever the block size
    again = paired_bootstrap(runs, same, n_boot=n_boot, seed=7)
    np.testing.assert_array_equal(again.aucs, boot.aucs)


def test_ci_excludes_zero_only_when_one_run_is_better():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    noise = rng.normal(0, 1, 600)
    strong = noise + 1.5 * same
    weak = noise + rng.normal(0, 0.7, 600) + 0.6 * same  # correlated with strong, as two models
    twin = rng.normal(0, 1, 600) + 1.5 * same  # same distribution as strong, other draws
    boot = paired_bootstrap([weak, strong, twin], same, n_boot=1000, seed=0)
    by_pair = {(d.a, d.b): d for d in boot.diffs}
    better = by_pair[(1, 0)]  # strong first: the higher observed AUC leads
    assert better.diff > 0.1 and better.ci_low > 0 and better.verdict == 1
    assert better.n_le_0 == 0
    tie = by_pair.get((1, 2)) or by_pair[(2, 1)]
    assert tie.ci_low < 0 < tie.ci_high and tie.verdict == 0 and tie.p_le_0 > 0.05
    lo, hi = boot.auc_ci(1)
    assert lo < boot.observed[1] < hi
    # the very same scores: every resampled difference is exactly 0
    same_twice = paired_bootstrap([strong, strong.copy()], same, n_boot=200)
    d = same_twice.diffs[0]
    assert (d.diff, d.ci_low, d.ci_high, d.p_le_0, d.verdict) == (0.0, 0.0, 0.0, 1.0, 0)


def test_pairing_narrows_the_interval():
    """Two runs that err on the same hard pairs: a paired bootstrap sees their difference
    clearly where unpaired intervals on each AUC would overlap."""
    rng = np.random.default_rng(4)
    same = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    base = rng.normal(0, 1, 800) + 1.0 * same
    better = base + 0.15 * same + rng.normal(0, 0.05, 800)
    boot = paired_bootstrap([base, better], same, n_boot=500)
    (d,) = boot.diffs
    assert d.a == 1 and d.ci_low > 0  # paired: clearly better
    assert boot.auc_ci(0)[1] > boot.auc_ci(1)[0]  # yet the per-run intervals overlap


def test_paired_bootstrap_hits_matches_a_slow_loop():
    rng = np.random.default_rng(3)
    n, n_boot = 80, 50
    runs = [rng.random(n) < p for p in (0.3, 0.5)]
    seeds = (rng.random((2, n)) < 0.6).astype(float)  # a configuration of two seeds
    boot = paired_bootstrap_hits([*runs, seeds], n_boot=n_boot, seed=5, chunk=7)
    # the slow way: the same index draws, each resample's rate by a plain mean
    idx = np.random.default_rng(5).integers(0, n, size=(n_boot, n))
    per_probe = [runs[0].astype(float), runs[1].astype(float), seeds.mean(axis=0)]
    stats = np.array([[p[i].mean() for i in idx] for p in per_probe])
    np.testing.assert_allclose(boot.stats, stats, atol=1e-12)
    observed = [p.mean() for p in per_probe]
    np.testing.assert_allclose(boot.observed, observed)
    assert [(d.a, d.b) for d in boot.diffs] == choose_comparisons(observed)
    for d in boot.diffs:
        lo, hi = np.percentile(stats[d.a] - stats[d.b], [2.5, 97.5])
        assert (d.ci_low, d.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    again = paired_bootstrap_hits([*runs, seeds], n_boot=n_boot, seed=5)  # other block size
    np.testing.assert_array_equal(again.stats, boot.stats)


def test_paired_bootstrap_hits_separates_only_a_real_difference():
    rng = np.random.default_rng(0)
    weak = rng.random(2000) < 0.10
    strong = weak | (rng.random(2000) < 0.05)  # the weak run's hits and ~4.5 points more
    twin = rng.random(2000) < 0.10  # the weak run's rate, other probes
    boot = paired_bootstrap_hits([weak, strong, twin], n_boot=1000)
    by = {(d.a, d.b): d for d in boot.diffs}
    assert by[(1, 0)].verdict == 1 and by[(1, 0)].n_le_0 == 0
    tie = by.get((0, 2)) or by[(2, 0)]
    assert tie.verdict == 0
    # the very same hits (one run, then its two seeds): every resampled difference is 0
    d = paired_bootstrap_hits([weak, np.stack([weak, weak])], n_boot=200).diffs[0]
    assert (d.diff, d.ci_low, d.ci_high, d.p_le_0, d.verdict) == (0.0, 0.0, 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="the same probes"):
        paired_bootstrap_hits([weak, strong[:10]])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap_hits([weak], n_boot=0)


def test_choose_comparisons():
    assert choose_comparisons([0.9, 0.95, 0.8]) == [(1, 0), (0, 2), (1, 2)]
    assert len(choose_comparisons([0.5] * 4)) == 6
    assert choose_comparisons([0.9, 0.8, 0.95, 0.7, 0.99]) == [(1, 0), (2, 0), (3, 0), (4, 0)]


def test_bad_bootstrap_input():
    with pytest.raises(ValueError, match="both same and different"):
        paired_bootstrap([np.zeros(4)], np.ones(4, bool))
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([np.r_[np.nan, 0.0]], np.r_[True, False])
    with pytest.raises(ValueError, match="weights for 3 pairs"):
        weighted_auc(np.zeros(2), np.r_[True, False], np.ones(3))


# ----------------------------------------------------------------------------- fake run folders


def make_images(root: Path, n_ids: int = 4, per_id: int = 4) -> list[str]:
    """Tiny coloured PNGs ``root/id{k}/{i}.png`` (a colour per identity); relative paths."""
    rng = np.random.default_rng(0)
    rel = []
    for k in range(n_ids):
        colour = np.roll([200, 40, 40], k) + 30 * (k // 3)
        for i in range(per_id):
            img = np.clip(colour + rng.normal(0, 15, (12, 12, 3)), 0, 255).astype(np.uint8)
            path = root / f"id{k}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), img)
            rel.append(f"id{k}/{i}.png")
    return rel


def write_pair_csv(path: Path, rel: list[str], per_id: int = 4, limit: int | None = None) -> Path:
    rows = ["path1,path2,same"]
    for a, b in itertools.combinations(range(len(rel)), 2):
        rows.append(f"{rel[a]},{rel[b]},{int(a // per_id == b // per_id)}")
    path.write_text("\n".join(rows[: None if limit is None else limit + 1]) + "\n")
    return path


def fake_run(
    folder: Path, name: str, loss: str, epochs=3, train_time_s=150.0, images_per_s=512.3
) -> Path:
    folder.mkdir(parents=True)
    metrics = {
        "name": name,
        "loss": loss,
        "epochs": epochs,
        "train_time_s": train_time_s,
        "images_per_s": images_per_s,
        "final": {"epoch": epochs - 1, "auc": 0.91, "acc": 0.85, "tar@1e-3": float("nan")},
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.json").write_text(
        json.dumps({"loss": loss, "data": "d", "seed": 42, "valid_pct": 0.1, "val_pairs": 100})
    )
    return folder


def cache_scores(run: Path, pairs, scores, stem: str, flip: bool = False) -> Path:
    """Write the run's verify outputs as ``fvloss verify`` would, from made-up scores."""
    result = verify_scores(scores, pairs.same, pairs.folds)
    write_outputs(result, run / "verify", stem, {"flip": flip}, run.name, scores, pairs)
    return run / "verify" / f"{stem}.scores.npz"


@pytest.fixture()
def no_model(monkeypatch):
    """Fail if anything tries to load a model: cached scores must be enough."""

    def load_run(*a, **k):
        pytest.fail("a model was loaded although cached scores exist")

    monkeypatch.setattr("fvloss.eval.load.load_run", load_run)


@pytest.fixture()
def two_runs(tmp_path):
    """Two fake runs with cached scores on ``dev.csv``: arcface clearly better than softmax."""
    rel = make_images(tmp_path / "img", n_ids=8, per_id=5)
    csv = write_pair_csv(tmp_path / "dev.csv", rel, per_id=5)
    pairs = read_pairs(csv, tmp_path / "img")
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, len(pairs))
    scores = {
        "softmax": noise + 0.5 * pairs.same,
        "arcface": noise + rng.normal(0, 0.3, len(pairs)) + 2.0 * pairs.same,
    }
    runs = {}
    for k, (loss, s) in enumerate(scores.items()):
        runs[loss] = fake_run(
            tmp_path / "runs" / f"{loss}-run", loss, loss, epochs=3 + k, train_time_s=90.0 * (k + 1)
        )
        cache_scores(runs[loss], pairs, s, "dev")
    return types.SimpleNamespace(
        root=tmp_path / "img", csv=csv, pairs=pairs, scores=scores, runs=runs, tmp=tmp_path
    )


def table_rows(md: str) -> dict[str, list[str]]:
    """First table of a Markdown text: ``{first cell: cells}``."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| run ") and "---" not in line:
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], cells)
    return rows


@pytest.mark.slow
def test_cli_on_cached_scores(two_runs, no_model, capsys):
    t = two_runs
    out = t.tmp / "cmp"
    argv = [str(t.runs["softmax"]), str(t.runs["arcface"]), "--pairs", str(t.csv)]
    argv += ["--root", str(t.root), "--out", str(out), "--bootstrap", "500", "--seed", "1"]
    assert cli.main(["compare", *argv]) == 0
    printed = capsys.readouterr().out
    md = (out / "compare.md").read_text()
    assert printed.strip() == md.strip()

    n = len(t.pairs)
    rows = table_rows(md)
    for k, loss in enumerate(["softmax", "arcface"]):
        r = verify_scores(t.scores[loss], t.pairs.same)
        cells = rows[loss]
        assert cells[1] == loss
        assert cells[2] == f"{roc_auc_score(t.pairs.same, t.scores[loss]):.4f}"
        assert cells[3] == f"{r.acc_mean:.4f} ± {r.acc_std:.4f}"
        assert cells[4].startswith("n/a [1]")  # too few different pairs for FAR 1e-3
        assert cells[5] == f"{r.eer:.4f}"
        assert cells[6:] == [str(3 + k), f"{1.5 * (k + 1):.1f}", "512"]
    n_diff = int((~t.pairs.same).sum())
    assert f"[1] {n_diff} different pairs resolve FAR down to" in md
    assert f"{n} pairs ({int(t.pairs.same.sum())} same, {n_diff} different)" in md
    assert "`dev.csv`" in md and "10 folds assigned (seed 0)" in md
    assert "cached verify/dev.scores.npz" in md
    assert "fvloss compare " + " ".join(argv) in md  # the exact command line

    # the bootstrap line: arcface first (higher AUC), interval above 0
    line = next(x for x in md.splitlines() if x.startswith("| arcface − softmax"))
    doc = json.loads((out / "compare.json").read_text())
    (c,) = doc["bootstrap"]["comparisons"]
    assert (c["a"], c["b"], c["better"]) == ("arcface", "softmax", "arcface")
    assert c["ci"][0] > 0 and c["p_le_0"] == 0 and "< 0.0020" in line and "arcface better" in line
    want = roc_auc(t.scores["arcface"], t.pairs.same) - roc_auc(t.scores["softmax"], t.pairs.same)
    assert c["diff"] == pytest.approx(want) and f"{want:+.4f}" in line
    assert doc["pairs"]["n_pairs"] == n and doc["pairs"]["sha1"] == pairs_digest(t.pairs)
    assert [r["label"] for r in doc["runs"]] == ["softmax", "arcface"]
    assert doc["runs"][0]["tar@1e-3"] is None and "resolve FAR" in doc["runs"][0]["tar_reason"]
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"  # a histogram per run
    # one run: its table and ROC, nothing to bootstrap
    assert compare.main([argv[0], *argv[2:]]) == 0
    assert "No bootstrap: it compares two or more runs." in capsys.readouterr().out


@pytest.mark.slow
def test_cli_module_entry_point(two_runs):
    t = two_runs
    out = t.tmp / "m"
    cmd = [sys.executable, "-m", "fvloss.cli", "compare", str(t.runs["softmax"])]
    cmd += [str(t.runs["arcface"]), "--pairs", str(t.csv), "--root", str(t.root)]
    cmd += ["--out", str(out), "--labels", "base,new", "--bootstrap", "50"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "| new − base |" in p.stdout and "[compare] base: cached" in p.stderr
    assert (out / "roc.png").is_file()


@pytest.mark.slow
def test_identical_distributions_are_not_told_apart(two_runs, no_model, capsys):
    t = two_runs
    rng = np.random.default_rng(9)
    twin = fake_run(t.tmp / "runs" / "twin", "arcface", "arcface")
    s = t.scores["arcface"]
    cache_scores(twin, t.pairs, rng.normal(0, 1, len(s)) + 2.0 * t.pairs.same, "dev")
    out = t.tmp / "cmp"
    argv = [str(t.runs["arcface"]), str(twin), "--pairs", str(t.csv), "--root", str(t.root)]
    assert compare.main([*argv, "--out", str(out)]) == 0
    md = capsys.readouterr().out
    # two runs called "arcface": the folder names tell them apart
    assert set(table_rows(md)) >= {"arcface-run", "twin"}
    (c,) = json.loads((out / "compare.json").read_text())["bootstrap"]["comparisons"]
    assert c["ci"][0] < 0 < c["ci"][1] and c["better"] is None
    assert "no clear difference" in md


@pytest.mark.slow
def test_many_runs_are_compared_with_the_first(two_runs, no_model, capsys):
    t = two_runs
    runs = [t.runs["softmax"]]
    rng = np.random.default_rng(3)
    for k in range(4):  # four variants, k = 3 clearly better than softmax
        run = fake_run(t.tmp / "runs" / f"v{k}", f"v{k}", "arcface", train_time_s=45.0)
        s = t.scores["softmax"] + (2.0 if k == 3 else 0.0) * t.pairs.same
        cache_scores(run, t.pairs, s + rng.normal(0, 0.01, len(s)), "dev")
        runs.append(run)
    argv = [*map(str, runs), "--pairs", str(t.csv), "--root", str(t.root)]
    assert compare.main([*argv, "--out", str(t.tmp / "o"), "--bootstrap", "300"]) == 0
    md = capsys.readouterr().out
    lines = [x for x in md.splitlines() if " − softmax |" in x]
    assert [x.split(" − ")[0] for x in lines] == ["| v0", "| v1", "| v2", "| v3"]
    assert "against the baseline `softmax`" in md
    assert lines[3].endswith("| v3 better |") and lines[0].endswith("| no clear difference |")
    assert "| 0.02 |" not in md and "| 0.75 |" in md  # 45 s of training: 0.75 min


@pytest.mark.slow
def test_stale_or_foreign_cache_is_rescored(two_runs, monkeypatch, capsys):
    """A cache made on other pairs, with --flip, or before the weights is not trusted."""
    t = two_runs
    run = t.runs["softmax"]
    npz = run / "verify" / "dev.scores.npz"
    digest = pairs_digest(t.pairs)
    assert load_scores(npz, digest, False)[0] is not None
    assert load_scores(npz, "0" * 40, False) == (None, "cached scores were made on other pairs")
    assert load_scores(npz, digest, True)[1] == "cached scores were made without --flip"
    assert load_scores(npz, digest, False, time.time() + 5)[1].endswith(
        "older than the run's weights"
    )
    assert load_scores(run / "nope.npz")[1] == "no cached scores"

    # softmax's cache is of a different pair file with the same stem: rescored with its model
    (t.tmp / "other").mkdir()
    rel = make_images(t.tmp / "other")
    other = read_pairs(write_pair_csv(t.tmp / "other" / "dev.csv", rel, limit=30))
    cache_scores(run, other, np.linspace(0, 1, len(other)), "dev")
    (run / "model.pth").write_bytes(b"weights")
    loaded = []

    class MeanColour(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def load_run(run_dir, device=None):
        loaded.append(Path(run_dir))

        def transform(rgb):
            return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - 0.5

        return types.SimpleNamespace(model=MeanColour(), eval_transform=transform)

    monkeypatch.setattr("fvloss.eval.load.load_run", load_run)
    argv = [str(run), str(t.runs["arcface"]), "--pairs", str(t.csv), "--root", str(t.root)]
    argv += ["--out", str(t.tmp / "cmp"), "--bootstrap", "100"]
    assert compare.main(argv) == 0
    assert loaded == [run]
    err = capsys.readouterr().err
    assert "softmax: scoring 780 pairs (cached scores were made on other pairs)" in err
    z = np.load(npz)
    assert str(z["pairs_sha1"]) == digest and len(z["scores"]) == len(t.pairs)
    model_scores, _ = score_pairs(MeanColour(), t.pairs, load_run(run).eval_transform)
    np.testing.assert_allclose(z["scores"], model_scores)
    assert json.loads((run / "verify" / "dev.json").read_text())["meta"]["by"] == "fvloss compare"
    # the rerun finds the fresh cache
    loaded.clear()
    assert compare.main(argv) == 0 and loaded == []
    (t.runs["arcface"] / "model.pth").write_bytes(b"weights")
    assert compare.main([*argv, "--rescore"]) == 0 and loaded == [run, t.runs["arcface"]]


def test_metrics_json_mode(two_runs, no_model, capsys):
    t = two_runs
    cfg = json.loads((t.runs["arcface"] / "config.json").read_text())
    (t.runs["arcface"] / "config.json").write_text(json.dumps({**cfg, "seed": 1}))
    out = t.tmp / "val"
    assert compare.main([str(t.runs["softmax"]), str(t.runs["arcface"]), "--out", str(out)]) == 0
    md = capsys.readouterr().out
    cells = table_rows(md)["softmax"]
    assert cells[2:6] == ["0.9100", "0.8500 ± n/a", "n/a [1]", "n/a"]
    assert "[1] not resolvable on the run's 100 validation pairs" in md
    assert "No ROC overlay and no bootstrap" in md and "differ in seed" in md
    assert not (out / "roc.png").exists()
    doc = json.loads((out / "compare.json").read_text())
    assert doc["mode"] == "metrics.json" and doc["bootstrap"] is None


def test_bad_input(two_runs, no_model, capsys):
    t = two_runs
    a, b = str(t.runs["softmax"]), str(t.runs["arcface"])
    assert compare.main([a, str(t.tmp / "absent")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert compare.main([a, b, "--labels", "x"]) == 2
    assert "--labels needs 2 distinct names" in capsys.readouterr().err
    assert compare.main([a, b, "--pairs", str(t.tmp / "none.csv")]) == 2
    assert "none.csv" in capsys.readouterr().err
    bare = t.tmp / "bare"
    bare.mkdir()  # no cache, no weights
    argv = [a, str(bare), "--pairs", str(t.csv), "--root", str(t.root), "--out", str(t.tmp / "o")]
    assert compare.main(argv) == 2
    assert "no cached scores, and no weights/config.json" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fvloss verify


def test_verify_writes_the_scores_compare_reads(tmp_path, monkeypatch, capsys):
    rel = make_images(tmp_path / "img")
    csv = write_pair_csv(tmp_path / "dev.csv", rel)

    class MeanColour(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def transform(rgb):
        return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - 0.5

    monkeypatch.setattr(
        "fvloss.eval.load.load_run",
        lambda run_dir, device=None: types.SimpleNamespace(
            model=MeanColour(), eval_transform=transform
        ),
    )
    run = tmp_path / "run"
    run.mkdir()
    assert (
        verify_main(["--run", str(run), "--pairs", str(csv), "--root", str(tmp_path / "img")]) == 0
    )
    assert "dev.scores.npz" in capsys.readouterr().out
    pairs = read_pairs(csv, tmp_path / "img")
    # per group (an identity -> group file): pairs within a group are scored, 64 cross ones not
    groups = tmp_path / "groups.csv"
    groups.write_text("id0,A\nid1,A\nid2,B\nid3,B\n")
    cmd = ["--run", str(run), "--pairs", str(csv), "--root", str(tmp_path / "img")]
    assert verify_main([*cmd, "--groups", str(groups), "--group-far", "0.05"]) == 0
    g = json.loads((run / "verify" / "dev.groups.json").read_text())
    assert g["counts"] == {"A": 28, "B": 28} and "64 cross-group pairs" in g["notes"][0]
    assert "gap (" in capsys.readouterr().out
    assert verify_main([*cmd, "--groups", str(groups)]) == 2  # 96 impostors cannot resolve 1e-2
    assert "cannot resolve FAR 0.01" in capsys.readouterr().err
    with np.load(run / "verify" / "dev.scores.npz") as z:
        assert z["scores"].dtype == np.float64 and z["same"].dtype == bool
        assert z["folds"].shape == (0,)  # the CSV defines no folds
        np.testing.assert_array_equal(z["same"], pairs.same)
        assert str(z["pairs_sha1"]) == pairs_digest(pairs)
        assert json.loads(str(z["meta"]))["flip"] is False
        auc = json.loads((run / "verify" / "dev.json").read_text())["auc"]
        assert roc_auc(z["scores"], z["same"]) == auc
    cached, why = load_scores(run / "verify" / "dev.scores.npz", pairs_digest(pairs), False)
    assert why == "" and cached.folds is None
    # the digest sees the images, the labels and the order, not how the root was spelled
    (tmp_path / "x").mkdir()
    assert pairs_digest(read_pairs(csv, tmp_path / "x" / ".." / "img")) == pairs_digest(pairs)
    assert pairs_digest(pairs.subset(np.arange(len(pairs)) != 0)) != pairs_digest(pairs)
    relabelled = read_pairs(csv, tmp_path / "img")
    relabelled.same[0] = not relabelled.same[0]
    assert pairs_digest(relabelled) != pairs_digest(pairs)
    with pytest.raises(ValueError, match="go together"):
        write_outputs(
            verify_scores(cached.scores, cached.same), tmp_path, "x", scores=cached.scores
        )


# ----------------------------------------------------------------------------- a real run


def train_tiny(data: Path, out: Path, seed: int) -> Path:
    from fvloss.recipes.softmax import main as softmax_main

    before = set(out.glob("*")) if out.exists() else set()
    softmax_main(
        ["--data", str(data), "--img-size", "32", "--arch", "resnet18", "--emb-dim", "16",
         "--bs", "16", "--epochs", "1", "--lr", "1e-3", "--val-pairs", "100",
         "--progress", "false", "--workers", "0", "--out", str(out), "--seed", str(seed),
         "--precision", "fp32"]
    )  # fmt: skip
    (run,) = set(out.glob("*")) - before
    return run


# Two 1-epoch trainings: ~11 s on two idle cores (~22 s while other jobs train), under the
# 20 s this project marks "slow".
@pytest.mark.slow
def test_end_to_end_on_real_runs(tmp_path, monkeypatch, capsys):
    from fvloss.data.synthetic import SyntheticSpec, make_synthetic

    data = make_synthetic(SyntheticSpec(8, 4, 32, 0), tmp_path / "data", quiet=True)
    runs = [train_tiny(data, tmp_path / "runs", seed) for seed in (1, 2)]
    images = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.png"))
    assert len(images) == 32
    rows = ["path1,path2,same"]
    for a, b in itertools.combinations(images, 2):
        rows.append(f"{a},{b},{int(a.split('/')[0] == b.split('/')[0])}")
    csv = tmp_path / "syn.csv"
    csv.write_text("\n".join(rows) + "\n")
    capsys.readouterr()

    out = tmp_path / "cmp"
    argv = [*map(str, runs), "--pairs", str(csv), "--root", str(data), "--out", str(out)]
    argv += ["--device", "cpu", "--labels", "seed1,seed2"]
    monkeypatch.chdir(tmp_path)
    assert cli.main(["compare", *argv]) == 0
    md = capsys.readouterr().out
    assert "496 pairs (48 same, 448 different)" in md
    assert "| seed2 − seed1 |" in md or "| seed1 − seed2 |" in md
    doc = json.loads((out / "compare.json").read_text())
    for run, row in zip(runs, doc["runs"]):
        assert row["scores"].startswith("scored now")
        verified = json.loads((run / "verify" / "syn.json").read_text())
        assert row["auc"] == verified["auc"] and 0 <= row["auc"] <= 1
        metrics = json.loads((run / "metrics.json").read_text())
        assert row["epochs"] == 1 and row["train_time_s"] == metrics["train_time_s"]
    # the cached scores serve the rerun; the numbers do not move
    monkeypatch.setattr("fvloss.eval.load.load_run", lambda *a, **k: pytest.fail("scored again"))
    assert compare.main(argv) == 0
    again = json.loads((out / "compare.json").read_text())
    assert [r["auc"] for r in again["runs"]] == [r["auc"] for r in doc["runs"]]
    assert all(r["scores"] == "cached verify/syn.scores.npz" for r in again["runs"])


def write_identify(run, ranks, mated=None, key="k1"):
    (run / "verify").mkdir(exist_ok=True)
    mated = [True] * len(ranks) if mated is None else mated
    hits = [r == 1 for r, m in zip(ranks, mated) if m]
    doc = {"set": "cfp frontal -> profile", "cmc": [float(np.mean(hits)), 1.0],
           "tpir": {"0.1": None}, "probe_key": key, "probe_rank": ranks, "probe_mated": mated}  # fmt: skip
    (run / "verify" / "identify.json").write_text(json.dumps(doc))


def test_rank1_differences_are_bootstrapped_over_the_probes(two_runs, no_model, capsys):
    t = two_runs
    rng = np.random.default_rng(1)
    soft = [1 if x else 2 for x in rng.random(400) < 0.2]
    arc = [1 if x or s == 1 else None for x, s in zip(rng.random(400) < 0.3, soft)]
    mated = [True] * 400 + [False] * 3  # non-mated probes do not count
    write_identify(t.runs["softmax"], [*soft, None, None, None], mated)
    write_identify(t.runs["arcface"], [*arc, 1, None, None], mated)
    out = t.tmp / "r1"
    runs = [str(t.runs["softmax"]), str(t.runs["arcface"])]
    assert compare.main([*runs, "--out", str(out), "--bootstrap", "500"]) == 0
    md = capsys.readouterr().out
    assert "## Rank-1 differences (paired bootstrap over the probes, 500 resamples" in md
    assert "400 mated probes" in md
    doc = json.loads((out / "compare.json").read_text())["rank1_bootstrap"]
    want = np.mean([a == 1 for a in arc]) - np.mean([s == 1 for s in soft])
    (c,) = doc["comparisons"]
    assert (c["a"], c["b"], c["better"]) == ("arcface", "softmax", "arcface")
    assert c["diff"] == pytest.approx(want) and c["ci"][0] > 0
    assert f"| arcface − softmax | {100 * want:+.2f} |" in md
    # other probes (another set, a skipped image): told, not paired
    write_identify(t.runs["arcface"], arc, key="k2")
    assert compare.main([*runs, "--out", str(out)]) == 0
    assert "No rank-1 bootstrap: the runs were identified on different probes" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "compare.json").read_text())["rank1_bootstrap"] is None
    (t.runs["arcface"] / "verify" / "identify.json").write_text(json.dumps({"cmc": [0.5]}))
    assert compare.main([*runs, "--out", str(out)]) == 0
    assert "not every run has per-probe ranks" in capsys.readouterr().out


def test_identification_columns_come_from_each_runs_identify_json(two_runs, no_model, capsys):
    t = two_runs
    (t.runs["arcface"] / "verify").mkdir(exist_ok=True)
    doc = {"set": "cfp frontal -> profile", "cmc": [0.25, 0.5], "tpir": {"0.1": 0.125}}
    (t.runs["arcface"] / "verify" / "identify.json").write_text(json.dumps(doc))
    out = t.tmp / "ident"
    assert compare.main([str(t.runs["softmax"]), str(t.runs["arcface"]), "--out", str(out)]) == 0
    md = capsys.readouterr().out
    assert "| rank-1 | TPIR@FPIR=1e-1 |" in md
    rows = table_rows(md)
    assert rows["arcface"][6:8] == ["0.2500", "0.1250"] and rows["softmax"][6:8] == ["n/a", "n/a"]
    assert "from each run's verify/identify.json: cfp frontal -> profile" in md
