"""Gallery search (fvloss.eval.search): FAISS's exact search ranks as a numpy matmul does; the
approximate indexes agree where their settings make them exact; inputs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from fvloss.eval.search import INDEXES, SearchIndex, build_index, register_index


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def numpy_top(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = queries @ gallery.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.mark.parametrize("kind", ["flat", "numpy"])
def test_exact_search_equals_a_numpy_ranking(kind):
    gallery, queries = unit(3000, 32, 0), unit(70, 32, 1)
    index = build_index(gallery, kind)
    scores, rows = index.search(queries, 10, batch=16)  # several query batches
    want_s, want_rows = numpy_top(gallery, queries, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5, atol=1e-6)


def test_a_memory_mapped_gallery_is_added_in_chunks(tmp_path):
    gallery = unit(1000, 8, 2)
    np.save(tmp_path / "g.npy", gallery)
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    index = INDEXES["flat"](8)
    index.add(mm, chunk=128)
    assert index.ntotal == 1000
    _, rows = index.search(gallery[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_ivf_probing_every_cell_is_exact_and_fewer_cells_still_recall_most():
    gallery, queries = unit(4000, 16, 3), unit(200, 16, 4)
    _, exact = numpy_top(gallery, queries, 1)
    full = build_index(gallery, "ivf", nlist=16, nprobe=16)
    assert (full.search(queries, 1)[1] == exact).all()
    some = build_index(gallery, "ivf", nlist=16, nprobe=4)
    recall = (some.search(queries, 1)[1] == exact).mean()
    assert 0.5 < recall < 1.0  # approximate: most, not all


def test_asking_for_more_than_the_gallery_pads_with_minus_one():
    index = build_index(unit(3, 4, 5), "flat")
    scores, rows = index.search(unit(2, 4, 6), 5)
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(rows[0, :3].tolist()) == [0, 1, 2]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="gallery is empty"):
        build_index(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match=r"queries: expected embeddings of shape \(n, 4\)"):
        build_index(unit(3, 4, 0)).search(unit(2, 5, 0), 1)
    with pytest.raises(ValueError, match="unknown index 'annoy'"):
        build_index(unit(3, 4, 0), "annoy")
    with pytest.raises(ValueError, match="20 training rows for nlist=64"):
        build_index(unit(20, 4, 0), "ivf", nlist=64)
    with pytest.raises(ValueError, match="already registered"):
        register_index("flat", SearchIndex)
