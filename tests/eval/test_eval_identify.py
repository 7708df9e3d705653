"""1:N identification (fvloss.eval.identify) on tiny galleries whose answers are worked out by
hand: faces are unit vectors in the plane at the angles given, so a score is cos(difference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fvloss.eval.identify import distractor_scaling, format_identification, identify, probe_key


def at(*degrees: float) -> np.ndarray:
    r = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)


def test_closed_set_ranks_and_cmc_by_hand():
    gallery, gl = at(0, 30, 90), ["A", "B", "C"]
    # 5 deg from A: rank 1. 20 deg, label C: B (.985) and A (.94) above C (.34): rank 3.
    # 60 deg, label B: B and C tie at cos 30: ties favour the probe, rank 1.
    # 100 deg, label A: C (.985) and B (.34) above A (-.17): rank 3.
    probes, pl = at(5, 20, 60, 100), ["A", "C", "B", "A"]
    res = identify(gallery, gl, probes, pl, max_rank=3)
    assert res.cmc == pytest.approx([0.5, 0.5, 1.0])
    assert (res.n_gallery, res.n_identities, res.n_mated, res.n_nonmated) == (3, 3, 4, 0)
    assert res.tpir == {}  # no non-mated probes: closed set only
    # Searching 2 ranks deep: the rank-3 probes are known to be beyond it.
    assert identify(gallery, gl, probes, pl, max_rank=2).cmc == pytest.approx([0.5, 0.5])


def test_an_identity_with_several_entries_counts_once_at_its_best():
    gallery, gl = at(10, 20, 40), ["A", "A", "B"]
    # 15 deg, label B: both A entries (.996) above B (.906): one identity, rank 2 (not 3).
    # 32 deg, label B: B (.990) above A's best (.978): rank 1.
    res = identify(gallery, gl, at(15, 32), ["B", "B"], max_rank=2)
    assert res.cmc == pytest.approx([0.5, 1.0])
    assert res.n_identities == 2


def test_open_set_tpir_at_fpir_by_hand():
    gallery, gl = at(0, 90), ["A", "B"]
    # Mated: 10 (A) and 80 (B) score .985 at rank 1; 50 (A) is at rank 2 (B .766 > A .643);
    # 39.5 (A) is at rank 1 with .7716.
    mated, ml = at(10, 80, 50, 39.5), ["A", "B", "A", "A"]
    # Ten non-mated probes at 35..44 deg: their top scores are cos 35 (.819) .. cos 44 (.719).
    non = at(*range(35, 45))
    res = identify(
        gallery, gl, np.r_[mated, non], ml + [f"X{i}" for i in range(10)],
        open_set=True, max_rank=2, fpirs=(1e-2, 0.1, 0.5),
    )  # fmt: skip
    assert (res.n_mated, res.n_nonmated) == (4, 10)
    assert res.cmc == pytest.approx([0.75, 1.0])
    # FPIR 0.1: one false positive allowed, the threshold sits just below cos 35: only the
    # two .985 probes pass: TPIR 2 / 4. FPIR 0.5: five allowed (35..39 deg), the threshold
    # sits between cos 39 (.777) and cos 40 (.766): the 39.5-deg probe passes too: 3 / 4.
    assert res.tpir[0.1] == pytest.approx(0.5)
    assert res.tpir[0.5] == pytest.approx(0.75)
    assert np.cos(np.deg2rad(40)) < res.thresholds[0.5] <= np.cos(np.deg2rad(39))
    # Ten non-mated probes cannot resolve FPIR 1e-2.
    assert res.tpir[1e-2] is None and "needs at least 100" in res.reasons[1e-2]
    fpir, tpir = res.curve
    assert fpir[0] == 0 and fpir[-1] == 1 and tpir[-1] == pytest.approx(0.75)
    assert all(np.diff(fpir) > 0) and all(np.diff(tpir) >= 0)
    row = res.row()
    assert row["rank1"] == pytest.approx(0.75) and row["tpir@1e-1"] == pytest.approx(0.5)
    assert "rank1=75.00%" in format_identification(res, "toy")


def test_each_probes_outcome_is_written_with_a_key_to_pair_runs_by():
    gallery, gl = at(0, 30, 90), ["A", "B", "C"]
    res = identify(gallery, gl, at(5, 20, 60, 100, 45), ["A", "C", "B", "A", "X"],
                   open_set=True, max_rank=2)  # fmt: skip
    res.probe_key = "abc"
    doc = json.loads(json.dumps(res.to_json()))  # as identify.json holds it
    # ranks by hand as in test_closed_set_ranks_and_cmc_by_hand; rank 3 is beyond max_rank 2
    assert doc["probe_rank"] == [1, None, 1, None, None]
    assert doc["probe_mated"] == [True, True, True, True, False]
    assert doc["probe_key"] == "abc"


def test_probe_key_names_the_probes_in_order_wherever_they_live(tmp_path):
    rel = [Path("data/x/001/a.jpg"), Path("data/x/002/b.jpg")]
    here = probe_key(rel, ["1", "2"])
    assert probe_key([tmp_path / p for p in rel], ["1", "2"]) == here  # the same set elsewhere
    assert probe_key(rel[::-1], ["2", "1"]) != here  # another order
    assert probe_key(rel, ["1", "3"]) != here  # other labels
    assert probe_key(rel[:1], ["1"]) != here  # a probe skipped
    with pytest.raises(ValueError, match="1 labels for 2 probes"):
        probe_key(rel, ["1"])


def test_distractors_push_probes_down_one_by_one(tmp_path):
    gallery, gl = at(0, 90), ["A", "B"]
    probes, pl = at(10, 80), ["A", "B"]
    # 5 deg beats the 10-deg probe's own A (cos 5 > cos 10); 85 deg beats the 80-deg one's B;
    # 45 deg beats neither. Read from a memory-mapped file, as `fvloss embed` writes them.
    np.save(tmp_path / "d.npy", at(5, 85, 45))
    distractors = np.load(tmp_path / "d.npy", mmap_mode="r")
    points = distractor_scaling(gallery, gl, probes, pl, distractors, [0, 1, 2, 3], max_rank=3)
    assert [p.distractors for p in points] == [0, 1, 2, 3]
    assert [p.rank(1) for p in points] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert [p.rank(2) for p in points] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert points[0].ms_per_query == 0 and points[-1].ms_per_query > 0


@pytest.mark.parametrize("kind", ["numpy", "hnsw"])
def test_identification_is_the_same_with_each_index(kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    gl = np.repeat(np.arange(40), 2)
    gallery = centres[gl] + 0.8 * rng.normal(size=(80, 16))
    pl = rng.integers(0, 40, 200)
    probes = centres[pl] + 0.8 * rng.normal(size=(200, 16))
    gallery, probes = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (gallery, probes))
    exact = identify(gallery, gl, probes, pl)
    other = identify(gallery, gl, probes, pl, index=kind)
    assert 0.2 < exact.rank(1) < 0.95  # a set where the ranks mean something
    assert other.cmc == pytest.approx(exact.cmc)


def test_bad_inputs_say_what_is_wrong():
    gallery, gl = at(0, 90), ["A", "B"]
    with pytest.raises(
        ValueError, match=r"1 probe\(s\) of identities with no gallery entry \(first: 'Z'\)"
    ):
        identify(gallery, gl, at(10, 20), ["A", "Z"])
    with pytest.raises(ValueError, match="gallery is empty"):
        identify(np.zeros((0, 2), np.float32), [], at(10), ["A"])
    with pytest.raises(ValueError, match="gallery is 2-d but probes are 3-d"):
        identify(gallery, gl, np.ones((1, 3), np.float32), ["A"])
    with pytest.raises(ValueError, match="gallery: 1 labels for 2 embeddings"):
        identify(gallery, ["A"], at(10), ["A"])
    with pytest.raises(ValueError, match="no probe's identity is enrolled"):
        identify(gallery, gl, at(10), ["Q"], open_set=True)
