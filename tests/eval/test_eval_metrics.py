"""Verification metrics against sklearn and against brute-force threshold sweeps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fvloss.eval.metrics import (
    assign_folds,
    cosine_scores,
    far_key,
    format_result,
    pairs_from_labels,
    roc_auc,
    roc_curve,
    verify_scores,
)
from fvloss.eval.plots import plot_roc, roc_figure


def random_scores(n: int, seed: int, decimals: int | None = None, pos=0.5):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < pos
    s = rng.normal(size=n) + 1.2 * y
    if decimals is not None:  # many ties
        s = np.round(s, decimals)
    return s, y


CASES = [(200, 0, None), (1000, 1, 1), (3000, 2, None), (777, 3, 0), (5000, 4, 2)]


# ----------------------------------------------------------------------------- brute force


def mid(hi, lo):
    m = 0.5 * (hi + lo)
    return m if lo < m <= hi else hi


def candidates(train_scores):
    """Every distinct way to split a training set: +inf, midpoints, -inf (descending)."""
    u = np.unique(train_scores)[::-1]
    return [math.inf] + [mid(u[i], u[i + 1]) for i in range(len(u) - 1)] + [-math.inf]


def brute_best_threshold(s, y):
    best, best_acc = None, -1.0
    for t in candidates(s):  # descending: the first max is the highest threshold
        acc = np.mean((s >= t) == y)
        if acc > best_acc:
            best, best_acc = t, acc
    return best, best_acc


def brute_kfold(s, y, folds):
    accs, thrs = [], []
    for g in np.unique(folds):
        tr, te = folds != g, folds == g
        t, _ = brute_best_threshold(s[tr], y[tr])
        accs.append(np.mean((s[te] >= t) == y[te]))
        thrs.append(t)
    return np.array(accs), thrs


def brute_tar_at_far(s, y, far):
    """Max TAR with FAR <= far, scanning thresholds from high to low."""
    best_t, best_tar = math.inf, 0.0
    for t in candidates(s):
        fa = np.mean(s[~y] >= t)
        if fa <= far:
            best_t, best_tar = t, np.mean(s[y] >= t)
    return best_t, best_tar


def brute_kfold_tar(s, y, folds, far):
    tars, fars = [], []
    for g in np.unique(folds):
        tr, te = folds != g, folds == g
        t, _ = brute_tar_at_far(s[tr], y[tr], far)
        tars.append(np.mean(s[te & y] >= t))
        fars.append(np.mean(s[te & ~y] >= t))
    return np.array(tars), np.array(fars)


# ----------------------------------------------------------------------------- ROC / AUC


@pytest.mark.parametrize("n, seed, decimals", CASES)
def test_auc_equals_sklearn(n, seed, decimals):
    s, y = random_scores(n, seed, decimals)
    assert abs(roc_auc(s, y) - roc_auc_score(y, s)) < 1e-9
    assert abs(verify_scores(s, y).auc - roc_auc_score(y, s)) < 1e-9


@pytest.mark.parametrize("n, seed, decimals", CASES)
def test_roc_curve_equals_sklearn(n, seed, decimals):
    s, y = random_scores(n, seed, decimals)
    fpr, tpr, thr = roc_curve(s, y)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert thr[0] == math.inf


def test_auc_extremes():
    y = np.array([1, 1, 0, 0], bool)
    assert roc_auc([0.9, 0.8, 0.2, 0.1], y) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], y) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], y) == 0.5


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("n, seed, decimals", CASES)
def test_kfold_accuracy_equals_brute_force(n, seed, decimals):
    s, y = random_scores(n, seed, decimals)
    folds = assign_folds(y, 10, seed=0)
    r = verify_scores(s, y)  # no folds given: the same assigned folds
    accs, thrs = brute_kfold(s, y, folds)
    np.testing.assert_array_equal(r.fold_acc, accs)
    assert r.fold_thresholds == thrs
    assert r.acc_mean == pytest.approx(accs.mean(), abs=1e-12)
    assert r.acc_std == pytest.approx(accs.std(), abs=1e-12)
    assert r.n_folds == 10 and r.folds_from == "assigned (seed 0)"


def test_kfold_with_file_folds_equals_brute_force():
    s, y = random_scores(1200, 7, decimals=1)
    folds = np.repeat(np.arange(4), 300) + 10  # arbitrary ids, contiguous like LFW View 2
    r = verify_scores(s, y, folds=folds)
    accs, _ = brute_kfold(s, y, folds)
    np.testing.assert_array_equal(r.fold_acc, accs)
    assert r.n_folds == 4 and r.folds_from == "file"


@pytest.mark.parametrize("n, seed, decimals", CASES)
def test_best_threshold_equals_brute_force(n, seed, decimals):
    s, y = random_scores(n, seed, decimals)
    r = verify_scores(s, y)
    t, acc = brute_best_threshold(s, y)
    assert r.threshold == t
    assert r.acc_at_threshold == pytest.approx(acc, abs=1e-12)


def test_perfect_separation():
    s = np.r_[np.linspace(0.6, 1.0, 50), np.linspace(-1.0, 0.4, 50)]
    y = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    r = verify_scores(s, y)
    assert r.auc == 1.0 and r.acc_mean == 1.0 and r.acc_std == 0.0 and r.eer == 0.0
    assert r.threshold == pytest.approx(0.5)


def test_ties_in_accuracy_prefer_the_highest_threshold():
    # accepting nothing and accepting the top two pairs are equally accurate (2 of 4)
    s = np.array([0.9, 0.8, 0.1, 0.05])
    y = np.array([0, 1, 0, 1], bool)
    r = verify_scores(s, y, folds=[0, 1, 0, 1])
    assert r.threshold == math.inf and r.acc_at_threshold == 0.5
    assert brute_best_threshold(s, y) == (math.inf, 0.5)


# ----------------------------------------------------------------------------- TAR@FAR


def test_far_limit_is_inclusive():
    # 3,000 different pairs: FAR <= 1e-3 allows exactly 3 false accepts
    neg = np.r_[0.95, 0.9, 0.85, np.linspace(-1, 0, 2997)]
    pos = np.array([0.99, 0.97, 0.92, 0.87, -0.5, -0.7])
    s, y = np.r_[pos, neg], np.r_[np.ones(6, bool), np.zeros(3000, bool)]
    e = verify_scores(s, y, fars=(1e-3,)).tar_at_far[1e-3]
    assert e.tar == 4 / 6 and 0.0 < e.threshold < 0.85  # the 3rd false accept is in


@pytest.mark.parametrize("far, n, decimals", [(1e-2, 3000, None), (1e-3, 12000, 2)])
def test_tar_at_far_equals_brute_force(far, n, decimals):
    s, y = random_scores(n, 5, decimals)
    r = verify_scores(s, y, fars=(far,))
    t, tar = brute_tar_at_far(s, y, far)
    entry = r.tar_at_far[far]
    assert entry.reason is None
    assert entry.threshold == t and entry.tar == pytest.approx(tar, abs=1e-12)
    # the k-fold variant: threshold from the other folds, TAR/FAR on the held-out fold
    tars, fars = brute_kfold_tar(s, y, assign_folds(y, 10), far)
    assert entry.kfold_reason is None
    assert entry.kfold_tar_mean == pytest.approx(tars.mean(), abs=1e-12)
    assert entry.kfold_tar_std == pytest.approx(tars.std(), abs=1e-12)
    assert entry.kfold_far_mean == pytest.approx(fars.mean(), abs=1e-12)


def test_tar_at_far_unresolved_says_why():
    s, y = random_scores(1000, 0)  # ~500 different pairs: FAR 1e-3 needs 1000
    r = verify_scores(s, y)
    e3, e4 = r.tar_at_far[1e-3], r.tar_at_far[1e-4]
    assert e3.tar is None and e3.threshold is None
    assert "different pairs" in e3.reason and "1000" in e3.reason
    assert "10000" in e4.reason
    assert e3.kfold_tar_mean is None and "fold" in e3.kfold_reason
    assert math.isnan(r.scalars()["tar@1e-3"])
    # enough negatives overall but not in the other folds of a fold: only k-fold unresolved
    s, y = random_scores(2100, 0, pos=0.5)
    n_neg = int((~y).sum())
    assert 1000 <= n_neg < 1000 * 10 / 9
    e3 = verify_scores(s, y).tar_at_far[1e-3]
    assert e3.tar is not None and e3.reason is None
    assert e3.kfold_tar_mean is None and "needs at least 1000" in e3.kfold_reason


# ----------------------------------------------------------------------------- EER


@pytest.mark.parametrize("n, seed, decimals", CASES)
def test_eer_lies_where_fpr_meets_fnr(n, seed, decimals):
    s, y = random_scores(n, seed, decimals)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    eer = verify_scores(s, y).eer
    # every ROC point has max(fpr, fnr) >= EER >= min(fpr, fnr) on its side of the crossing
    assert np.max(np.minimum(fpr, fnr)) - 1e-12 <= eer <= np.min(np.maximum(fpr, fnr)) + 1e-12


def test_eer_hand_example():
    # scores: same 0.9, 0.6, 0.4; different 0.7, 0.3, 0.2
    s = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2])
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    # ROC points (fpr, fnr): (0,1) (0,2/3) (1/3,2/3) (1/3,1/3) ... -> crossing at 1/3
    assert verify_scores(s, y, n_folds=3).eer == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- helpers


def test_assign_folds_stratified_and_deterministic():
    y = np.r_[np.ones(53, bool), np.zeros(47, bool)]
    f = assign_folds(y, 10, seed=3)
    np.testing.assert_array_equal(f, assign_folds(y, 10, seed=3))
    assert not np.array_equal(f, assign_folds(y, 10, seed=4))
    sizes = np.bincount(f, minlength=10)
    assert sizes.max() - sizes.min() <= 1
    pos = np.bincount(f[y], minlength=10)
    assert pos.max() - pos.min() <= 1


def test_input_errors():
    with pytest.raises(ValueError, match="both same and different"):
        verify_scores([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        verify_scores([0.1, np.nan, 0.3, 0.2], [1, 0, 1, 0])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        verify_scores([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="at least 2 folds"):
        verify_scores([0.1, 0.2], [1, 0], folds=[0, 0])


def test_cosine_scores():
    e = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    s = cosine_scores(e, [[0, 1], [0, 2], [0, 3]])
    np.testing.assert_allclose(s, [1.0, 0.0, -math.sqrt(0.5)])


def test_pairs_from_labels():
    labels = np.repeat(np.array([5, 7, 9, 11, 13]), [4, 3, 1, 6, 2])
    idx, same = pairs_from_labels(labels, 40, seed=1)
    idx2, same2 = pairs_from_labels(labels, 40, seed=1)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(same, same2)
    assert same.sum() == 20 and (~same).sum() == 20
    assert (labels[idx[:, 0]] == labels[idx[:, 1]]).tolist() == same.tolist()
    assert (idx[:, 0] < idx[:, 1]).all()
    assert len({tuple(p) for p in idx}) == len(idx)
    # only 6 + 3 + 15 + 1 = 25 same pairs exist: ask for 60 -> all 25, plus 30 different
    idx, same = pairs_from_labels(labels, 60, seed=0)
    assert same.sum() == 25 and (~same).sum() == 30
    idx, same = pairs_from_labels(np.arange(5), 10, seed=0)  # nobody has a sibling
    assert same.sum() == 0 and len(idx) == 5


def test_far_key():
    assert far_key(1e-3) == "1e-3" and far_key(1e-4) == "1e-4" and far_key(0.05) == "5e-2"


def test_result_json_table_and_plots(tmp_path):
    s, y = random_scores(4000, 9)
    r = verify_scores(s, y, skipped=["p.txt, line 3: image not found: x.jpg"])
    d = r.to_dict(max_roc_points=200)
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN/Infinity
    back = json.loads(text)
    assert back["auc"] == r.auc and back["n_skipped"] == 1
    assert back["tar_at_far"]["1e-4"]["tar"] is None and back["tar_at_far"]["1e-4"]["reason"]
    assert 100 < len(back["roc"]["fpr"]) <= 240
    assert back["roc"]["fpr"][0] == 0.0 and back["roc"]["fpr"][-1] == 1.0
    assert back["roc"]["thresholds"][0] is None  # +inf
    table = format_result(r, title="demo")
    assert "ROC AUC" in table and "1 skipped" in table and "n/a" in table
    s2, y2 = random_scores(500, 10)
    fig = roc_figure({"A": r, "B": (*roc_curve(s2, y2)[:2], roc_auc(s2, y2))})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == f"A (AUC {r.auc:.4f})" and labels[1].startswith("B (AUC 0.")
    out = plot_roc({"A": r}, tmp_path / "sub" / "roc.png", title="t", log_fpr=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
