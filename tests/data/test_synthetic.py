"""The embedded synthetic data set: deterministic, identities differ, cached, written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fvloss.cli import synthetic as synthetic_cli
from fvloss.data import synthetic
from fvloss.data.synthetic import SyntheticSpec, default_cache_dir, make_synthetic, render_face
from fvloss.imageio import read_rgb

SPEC = SyntheticSpec(4, 3, 32, 0)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_layout_and_metadata(tmp_path):
    root = make_synthetic(SPEC, tmp_path / "syn", quiet=True)
    assert root == tmp_path / "syn"
    assert sorted(p.name for p in root.iterdir()) == [
        "id0000",
        "id0001",
        "id0002",
        "id0003",
        "synthetic.json",
    ]
    assert sorted(files(root)) == [
        f"id{i:04d}/id{i:04d}_{j:03d}.png" for i in range(4) for j in range(3)
    ]
    img = read_rgb(root / "id0002" / "id0002_001.png")
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["name"] == "synthetic"
    assert (meta["n_identities"], meta["images_per_identity"], meta["size"], meta["seed"]) == (
        4,
        3,
        32,
        0,
    )
    assert meta["version"] == synthetic.GENERATOR_VERSION
    assert not list(tmp_path.glob(".partial-*"))


def test_deterministic_across_folders(tmp_path):
    a = files(make_synthetic(SPEC, tmp_path / "a", quiet=True))
    b = files(make_synthetic(SPEC, tmp_path / "b", quiet=True))
    assert a.keys() == b.keys() and a == b
    c = files(make_synthetic(SyntheticSpec(4, 3, 32, 1), tmp_path / "c", quiet=True))
    assert all(a[k] != c[k] for k in a)  # the seed changes every picture


def test_identity_does_not_depend_on_set_size(tmp_path):
    small = files(make_synthetic(SyntheticSpec(2, 2, 32, 0), tmp_path / "s", quiet=True))
    big = files(make_synthetic(SPEC, tmp_path / "b", quiet=True))
    assert all(big[k] == v for k, v in small.items())


def test_identities_differ_more_than_images_of_one(tmp_path):
    root = make_synthetic(SyntheticSpec(6, 4, 32, 0), tmp_path / "syn", quiet=True)
    imgs = {
        (i, j): read_rgb(root / f"id{i:04d}" / f"id{i:04d}_{j:03d}.png").astype(np.float64)
        for i in range(6)
        for j in range(4)
    }
    # all pictures are different from each other
    keys = list(imgs)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            assert not np.array_equal(imgs[keys[a]], imgs[keys[b]])
    # identities are drawn with different geometry and colours
    params = [synthetic._identity(np.random.default_rng([0, i])) for i in range(6)]
    assert len({tuple(np.round(p["skin"], 3)) for p in params}) == 6
    assert len({round(p["eye_dx"], 6) for p in params}) == 6
    # and it shows: leave-one-out nearest-mean-image matching is far above chance (4/24)
    hits = 0
    for i, j in keys:
        rest = {
            k: np.mean([imgs[k, m] for m in range(4) if (k, m) != (i, j)], axis=0) for k in range(6)
        }
        dist = {k: np.abs(imgs[i, j] - r).mean() for k, r in rest.items()}
        hits += min(dist, key=dist.get) == i
    assert hits >= 12, hits


def test_cache_is_reused(tmp_path, monkeypatch):
    root = make_synthetic(SPEC, tmp_path / "syn", quiet=True)
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def fail(*a, **k):
        raise AssertionError("render_face called although the set is cached")

    monkeypatch.setattr(synthetic, "render_face", fail)
    t = time.perf_counter()
    assert make_synthetic(SPEC, root, quiet=True) == root
    assert time.perf_counter() - t < 2.0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp
    assert not list(tmp_path.glob(".partial-*"))


def test_incomplete_folder_is_rebuilt(tmp_path):
    root = tmp_path / "syn"
    (root / "id0000").mkdir(parents=True)
    (root / "id0000" / "junk.png").write_bytes(b"half")  # no synthetic.json: not complete
    make_synthetic(SPEC, root, quiet=True)
    assert not (root / "id0000" / "junk.png").exists()
    assert (root / "synthetic.json").exists() and len(files(root)) == 12


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(ident, rng, size):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(synthetic, "render_face", boom)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(SPEC, tmp_path / "syn", quiet=True)
    assert not (tmp_path / "syn").exists()
    assert list(tmp_path.iterdir()) == []  # no .partial-* left behind


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FVLOSS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FVLOSS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "fvloss"
    assert SPEC.name == f"synthetic-v{synthetic.GENERATOR_VERSION}-4x3-32px-seed0"


def test_render_face_is_a_pure_function_of_its_rng():
    ident = synthetic._identity(np.random.default_rng([0, 1]))
    a = render_face(ident, np.random.default_rng(5), 24)
    b = render_face(ident, np.random.default_rng(5), 24)
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_cli_writes_to_a_folder(tmp_path, capsys):
    assert (
        synthetic_cli.main(
            [str(tmp_path / "out"), "--identities", "2", "--images", "2", "--size", "16"]
        )
        == 0
    )
    assert "2 identities x 2 images" in capsys.readouterr().out
    assert len(files(tmp_path / "out")) == 4
