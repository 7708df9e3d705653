"""Per-group metrics (fvloss.eval.fairness): attribute files, group assignment, verification
and identification per group with the gap's bootstrap interval, against direct computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fvloss.eval.fairness import (
    cfp_pose,
    identification_by_group,
    image_groups,
    read_attributes,
    verification_by_group,
)
from fvloss.eval.metrics import roc_auc


def test_attribute_file_and_group_lookup(tmp_path):
    f = tmp_path / "groups.csv"
    f.write_text("key,group\nalice,A\nbob/02.jpg,B\nbob,A\n")
    attrs = read_attributes(f)
    assert attrs == {"alice": "A", "bob/02.jpg": "B", "bob": "A"}
    paths = [
        tmp_path / "alice/01.jpg",
        tmp_path / "bob/02.jpg",
        tmp_path / "bob/03.jpg",
        tmp_path / "eve/1.jpg",
    ]
    # an image's own row wins over its identity's
    assert image_groups(paths, attrs, root=tmp_path) == ["A", "B", "A", None]
    f.write_text("alice,A\nalice,B\n")
    with pytest.raises(ValueError, match=r"groups.csv:2: 'alice' is 'B' here, 'A' on line 1"):
        read_attributes(f)
    f.write_text("alice,A,extra\n")
    with pytest.raises(ValueError, match=r"groups.csv:1: expected 'key,group'"):
        read_attributes(f)
    assert cfp_pose([Path("001/frontal/01.jpg"), Path("001/profile/02.jpg"), Path("x/1.jpg")]) == [
        "frontal",
        "profile",
        None,
    ]


def test_verification_by_group_matches_direct_computation():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.5
    grp = np.where(rng.random(n) < 0.5, "A", "B")
    # A separates well, B barely: scores drawn with different margins
    s = rng.normal(np.where(y, np.where(grp == "A", 2.0, 0.3), 0.0), 1.0)
    gb = grp.copy()
    gb[:10] = "C"  # ten cross-group pairs (an image of another group)
    r = verification_by_group(s, y, grp, gb, far=0.05, n_boot=200, seed=1)
    within = grp == gb
    for g in ("A", "B"):
        m = within & (grp == g)
        assert r.values[g] == pytest.approx(roc_auc(s[m], y[m]))
        assert r.counts[g] == m.sum()
    assert r.worst() == "B" and r.gap == pytest.approx(r.values["A"] - r.values["B"])
    lo, hi = r.gap_ci
    assert lo < r.gap < hi and lo > 0  # this gap is far from noise
    # FNMR / FMR at the one threshold fixed at FAR 5% over all pairs
    neg = np.sort(s[~y])[::-1]
    k = int(0.05 * len(neg))
    t = (neg[k - 1] + neg[k]) / 2
    m = within & (grp == "B")
    assert r.extra["fnmr"]["B"] == pytest.approx(np.mean(s[m & y] < t))
    assert r.extra["fmr"]["A"] == pytest.approx(np.mean(s[within & (grp == "A") & ~y] >= t))
    assert any("10 cross-group pairs" in x for x in r.notes)
    assert "gap (A - B)" in r.format()


def test_identification_by_group_by_hand():
    r = identification_by_group(
        [1, 1, 2, 1, 3, 3, 1], ["x", "x", "x", "y", "y", "y", None], n_boot=100
    )
    assert r.values == pytest.approx({"x": 2 / 3, "y": 1 / 3})
    assert r.gap == pytest.approx(1 / 3) and r.counts == {"x": 3, "y": 3}
    assert r.notes == ["1 probes without a group"]
    with pytest.raises(ValueError, match="at least 2 groups"):
        identification_by_group([1, 2], ["x", "x"])


def test_a_group_without_impostors_is_named_not_scored():
    s = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.6])
    y = np.array([True, False, True, False, True, True])
    g = ["A", "A", "B", "B", "C", "C"]
    r = verification_by_group(s, y, g, g, far=0.5, n_boot=10)
    assert set(r.values) == {"A", "B"}
    assert any("group 'C': 2 pairs, not both genuine and impostor" in x for x in r.notes)
