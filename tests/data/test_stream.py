"""The packed data index (fvloss.data.stream): flat arrays, built once, mapped by every rank, serving
the same batches as the default per-image path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from distributed_common import run_ranks

from fvloss.data import face_dls, scan_identities, scan_records
from fvloss.data.recordio import pack_folder
from fvloss.data.stream import PackedIndex, shared_index


@pytest.fixture(scope="module")
def rec(tiny_synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec")
    pack_folder(tiny_synthetic, out)
    return out


@pytest.mark.parametrize("kind", ["folder", "rec"])
def test_a_packed_index_is_the_scan_in_arrays_and_maps_back(tiny_synthetic, rec, tmp_path, kind):
    scan = scan_identities(tiny_synthetic) if kind == "folder" else scan_records(rec)
    packed = PackedIndex.from_scan(scan)
    back = PackedIndex.load(packed.save(tmp_path / "index"))
    for p in (packed, back):
        assert len(p) == len(scan.items) and p.names == scan.identities
        assert [p.item(i) for i in range(len(p))] == list(scan.items)
        assert [p.names[c] for c in p.codes] == list(scan.labels)
        assert p.report == scan.report.to_dict()
    assert isinstance(back.codes, np.memmap)  # mapped, not read into objects
    assert back.codes.dtype == np.int32 and back.nbytes == packed.nbytes


def test_a_missing_or_broken_index_names_its_folder(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path}: not a readable packed index"):
        PackedIndex.load(tmp_path)


def _batches(dls, epoch: int, n: int = 2) -> list:
    dls.train.set_epoch(epoch)
    it = iter(dls.train)
    return [next(it) for _ in range(n)] + [next(iter(dls.valid))]


@pytest.mark.parametrize("kind", ["folder", "rec"])
def test_streamed_batches_are_the_per_image_paths(tiny_synthetic, rec, kind):
    root = tiny_synthetic if kind == "folder" else rec
    kw = {"img_size": 32, "bs": 4, "seed": 5, "num_workers": 0, "valid_pct": 0.34,
          "extra_aug": [{"transform": "Affine", "rotate": [-20, 20], "p": 0.7}]}  # fmt: skip
    ref = face_dls(root, preload="off", **kw)
    got = face_dls(root, stream=True, **kw)
    assert got.n_classes == ref.n_classes and got.vocab == list(ref.vocab)
    assert got.valid_identities == ref.valid_identities and len(got.train) == len(ref.train)
    assert "streamed from a packed index" in got.pipeline
    assert got.report.summary() == ref.report.summary()
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(_batches(ref, epoch), _batches(got, epoch), strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    for dl in (ref.train, got.train):  # one rank's share, as the default path's
        dl.shard(1, 2)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(ref.train, got.train, strict=True))


def _shared(rank: int, world: int, root: str, folder: str) -> dict:
    scans = []

    def scan():
        scans.append(rank)
        return scan_identities(root)

    index = shared_index(folder, scan)
    return {"scanned": scans, "n": len(index), "codes": np.asarray(index.codes).copy(),
            "mapped": isinstance(index.codes, np.memmap)}  # fmt: skip


@pytest.mark.slow
def test_rank_0_alone_scans_and_every_rank_maps_the_index(tiny_synthetic, tmp_path):
    ranks = run_ranks(_shared, 2, str(tiny_synthetic), str(tmp_path / "index"))
    assert [r["scanned"] for r in ranks] == [[0], []]
    assert all(r["mapped"] and r["n"] == 24 for r in ranks)
    assert np.array_equal(ranks[0]["codes"], ranks[1]["codes"])
