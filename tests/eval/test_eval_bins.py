"""insightface ``.bin`` sets: the restricted reader, the writer, ``pack-bin`` and equivalence
with the pair file it was packed from."""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from fvloss.cli.pack_bin import main
from fvloss.eval.bins import (
    BinFileError,
    BinFoldWarning,
    kfold_ids,
    load_bin,
    pack_bin,
    pack_order,
    read_bin_pairs,
    write_bin,
)
from fvloss.eval.metrics import assign_folds
from fvloss.eval.protocols import PairSet, read_pairs
from fvloss.imageio import ImageReadError, read_rgb


def _png(seed: int, size: int = 8) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


# ----------------------------------------------------------------------------- Python 2 pickles
# Python 2's pickle writes ``str`` as SHORT_BINSTRING ('U', 1-byte length) or BINSTRING ('T',
# 4-byte length); these helpers write the opcodes by hand (no Python 2 here).


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


_DTYPE_STATE = b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"


def _py2_array(data: bytes) -> bytes:
    """A numpy 1.x / Python 2 pickle of ``np.frombuffer(data, np.uint8)``."""
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R(K\x01"
        + (b"J" + struct.pack("<i", len(data)))
        + b"\x85cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R"
        + _DTYPE_STATE
        + b"\x89"
        + _py2_str(data)
        + b"tb"
    )


def _py2_bool(v: bool) -> bytes:
    """A Python 2 pickle of ``np.bool_(v)``."""
    return (
        b"cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\n"
        + _py2_str(b"b1")
        + b"K\x00K\x01\x87R"
        + _DTYPE_STATE
        + _py2_str(b"\x01" if v else b"\x00")
        + b"\x86R"
    )


def _py2_bin(items: list[bytes], labels: list[bytes]) -> bytes:
    """``(items, labels)`` as protocol 2: EMPTY_LIST MARK ... APPENDS, a TUPLE2, STOP."""
    return b"\x80\x02](" + b"".join(items) + b"e](" + b"".join(labels) + b"e\x86."


def test_py2_pickle_of_str_items_loads(tmp_path):
    imgs = [_png(0, size=4), _png(1, size=40), _png(2), _png(3)]
    assert len(imgs[1]) >= 256 and len(imgs[0]) < 256  # both BINSTRING and SHORT_BINSTRING
    f = tmp_path / "py2.bin"
    f.write_bytes(_py2_bin([_py2_str(b) for b in imgs], [b"\x88", b"\x89"]))
    images, issame = load_bin(f)
    assert images == imgs and issame.tolist() == [True, False]


def test_py2_pickle_of_numpy_items_loads(tmp_path):
    imgs = [_png(0), _png(1)]
    f = tmp_path / "py2np.bin"
    f.write_bytes(_py2_bin([_py2_array(b) for b in imgs], [_py2_bool(True)]))
    assert pickle.loads(f.read_bytes(), encoding="bytes")[1] == [np.True_]  # a valid pickle
    images, issame = load_bin(f)
    assert [x.tobytes() for x in images] == imgs and issame.tolist() == [True]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_py3_pickles_load(tmp_path, protocol):
    imgs = [_png(0), _png(1), b"", _png(2)]  # py3 protocol 2 writes b"" as bytes()
    data = pickle.dumps((imgs, [True, False]), protocol=protocol)
    if protocol == 2:
        assert b"_codecs" in data  # bytes as _codecs.encode(text, "latin1")
    f = tmp_path / "py3.bin"
    f.write_bytes(data)
    images, issame = load_bin(f)
    assert images == imgs and issame.dtype == bool and issame.tolist() == [True, False]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_items_and_labels_load(tmp_path, protocol):
    enc = np.frombuffer(_png(0), np.uint8)
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    fortran = np.asfortranarray(rgb)
    for labels in (np.array([True, False]), [np.True_, np.False_], np.array([1, 0], np.uint8)):
        f = tmp_path / "np.bin"
        f.write_bytes(pickle.dumps(([enc, rgb, fortran, enc], labels), protocol=protocol))
        images, issame = load_bin(f)
        assert issame.tolist() == [True, False]
        np.testing.assert_array_equal(images[0], enc)
        np.testing.assert_array_equal(images[1], rgb)
        np.testing.assert_array_equal(images[2], rgb)
    pairs = read_bin_pairs(f)  # decoded arrays are used as they are, encoded ones decoded
    assert len(pairs.paths) == 2  # enc twice, rgb == fortran: one image each
    np.testing.assert_array_equal(pairs.load(1), rgb)
    assert pairs.load(0).shape == (8, 8, 3)


class _Custom:
    def __init__(self):
        self.x = 1


class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _payloads(marker: Path) -> list[tuple[object, str]]:
    return [
        (_Payload(os.system, f"touch '{marker}'"), "system"),
        (_Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"), "builtin__.eval"),
    ]


@pytest.mark.parametrize("which", [0, 1])
def test_code_in_a_pickle_is_refused_not_run(tmp_path, which):
    marker = tmp_path / "pwned"
    payload, name = _payloads(marker)[which]
    f = tmp_path / "evil.bin"
    f.write_bytes(pickle.dumps(([_png(0), payload], [True]), protocol=2))
    with pytest.raises(BinFileError) as e:
        load_bin(f)
    assert str(f) in str(e.value) and name in str(e.value) and e.value.path == str(f)
    assert not marker.exists()
    with pytest.raises(BinFileError):
        read_pairs(f)  # the bin protocol goes through the same reader
    assert not marker.exists()
    pickle.loads(f.read_bytes())  # proof that the payload is live: plain pickle runs it
    assert marker.exists()


def test_custom_class_refused(tmp_path):
    f = tmp_path / "cls.bin"
    f.write_bytes(pickle.dumps(([_png(0), _png(1)], [_Custom()]), protocol=4))
    with pytest.raises(BinFileError, match=r"refused to load global .*_Custom") as e:
        load_bin(f)
    assert str(f) in str(e.value)


@pytest.mark.parametrize("protocol", [2, 5])
def test_non_uint8_arrays_refused(tmp_path, protocol):
    f = tmp_path / "f.bin"
    bad_image = ([np.zeros(4, np.float32), _png(0)], [True])
    bad_labels = ([_png(0), _png(1)], np.array([1], np.int64))
    structured = ([np.zeros(2, [("a", "u1")]), _png(0)], [True])
    for obj, code in ((bad_image, "f4"), (bad_labels, "i8"), (structured, "V1")):
        f.write_bytes(pickle.dumps(obj, protocol=protocol))
        with pytest.raises(BinFileError, match=f"refused numpy dtype '{code}'"):
            load_bin(f)
    f.write_bytes(pickle.dumps(([np.zeros(4, np.bool_), _png(0)], [True]), protocol=protocol))
    with pytest.raises(BinFileError, match="image 0 is a bool array"):
        load_bin(f)


@pytest.mark.parametrize(
    "body, match",
    [
        (b"c_codecs\nencode\n}b", "refused to set state on _codecs.encode"),  # BUILD a global
        (  # a uint8 dtype BUILT with fields: a structured dtype in disguise
            b"cnumpy\ndtype\n"
            + _py2_str(b"u1")
            + b"K\x00K\x01\x87R(K\x03"
            + _py2_str(b"|")
            + b"N(U\x01atNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
            "refused numpy dtype state",
        ),
        (  # _reconstruct of something other than numpy.ndarray
            b"cnumpy.core.multiarray\n_reconstruct\nc_codecs\nencode\nK\x00\x85U\x01b\x87R",
            "only build a plain numpy.ndarray",
        ),
        (b"cnumpy\nndarray\nK\x01\x85R", "may only be passed to"),  # ndarray(...) itself
    ],
)
def test_numpy_tricks_refused(tmp_path, body, match):
    f = tmp_path / "trick.bin"
    f.write_bytes(b"\x80\x02" + body + b".")
    with pytest.raises(BinFileError, match=match):
        load_bin(f)


def test_truncated_empty_and_foreign_files(tmp_path):
    f = write_bin(tmp_path / "t.bin", [_png(0), _png(1)], [True])
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(BinFileError, match="truncated") as e:
        load_bin(f)
    assert e.value.path == str(f)
    f.write_bytes(b"")
    with pytest.raises(BinFileError, match="empty file"):
        load_bin(f)
    f.write_bytes(_png(0))
    with pytest.raises(BinFileError, match="not a readable pickle"):
        load_bin(f)
    with pytest.raises(BinFileError, match="cannot read file"):
        load_bin(tmp_path / "absent.bin")


@pytest.mark.parametrize(
    "obj, match",
    [
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", b"b"], [True], 3), "got a 3-item tuple"),
        ({"bins": [], "issame": []}, "got a dict"),
        (([b"a", b"b"], [2]), "other than true/false"),
        (([b"a", b"b"], [10**30]), "other than true/false"),
        (([b"a", b"b"], np.array([2], np.uint8)), "other than true/false"),
        (([b"a", 7], [True]), "image 1 is a int"),
        (([b"a", b"b"], ["yes"]), "issame holds a str"),
        (([], []), "no pairs"),
    ],
)
def test_wrong_structure(tmp_path, obj, match):
    f = tmp_path / "s.bin"
    f.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(BinFileError, match=match) as e:
        load_bin(f)
    assert str(f) in str(e.value)


def test_round_trip_and_pairset(tmp_path):
    a, b, c = _png(0), _png(1), _png(2)
    images = [a, b, a, c, b, c] + [a, b] * 10  # 13 pairs, images repeated
    same = [True, False, True] + [False, True] * 5
    f = write_bin(tmp_path / "cfp_fp.bin", images, same)
    got, issame = load_bin(f)
    assert got == images and issame.tolist() == same
    pairs = read_bin_pairs(f)
    assert pairs.paths == [Path(f"{f}#0"), Path(f"{f}#1"), Path(f"{f}#3")]  # de-duplicated
    assert [[pairs.images[i] for i in ij] for ij in pairs.index] == [
        images[2 * k : 2 * k + 2] for k in range(13)
    ]
    assert pairs.same.tolist() == same and pairs.name == "cfp_fp" and pairs.format == "bin"
    assert pairs.source == str(f)
    assert pairs.folds.tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9]  # KFold's split
    np.testing.assert_array_equal(
        pairs.load(0), cv2.imdecode(np.frombuffer(a, np.uint8), 1)[..., ::-1]
    )
    assert read_pairs(f).format == "bin"


def test_kfold_ids_and_assign_folds_match_sklearn_kfold():
    from sklearn.model_selection import KFold

    for n in (10, 13, 1000, 6000):
        want = np.empty(n, np.int64)
        for g, (_, test) in enumerate(KFold(10, shuffle=False).split(np.zeros(n))):
            want[test] = g
        np.testing.assert_array_equal(kfold_ids(n), want)
    for n_same, n_diff in ((500, 500), (7, 6), (3, 11), (301, 299), (1, 1)):
        same = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
        sizes = np.bincount(assign_folds(same, 10, seed=0), minlength=10)
        np.testing.assert_array_equal(sizes, np.bincount(kfold_ids(len(same)), minlength=10))


def test_undecodable_image_is_named_when_scored(tmp_path):
    import torch

    from fvloss.eval.score import score_pairs

    f = write_bin(tmp_path / "bad.bin", [_png(0), b"not an image", _png(1), _png(2)], [1, 0])
    pairs = read_bin_pairs(f)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    transform = lambda img: torch.from_numpy(img).permute(2, 0, 1).float()  # noqa: E731
    with pytest.raises(ImageReadError) as e:
        score_pairs(model, pairs, transform)
    assert e.value.path == f"{f}#1"
    scores, kept = score_pairs(model, pairs, transform, skip_missing=True)
    assert len(scores) == 1 and kept.n_skipped == 1 and f"{f}#1" in kept.skipped[0]


def _png_files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"img{i}.png"
        p.write_bytes(_png(i))
        out.append(p)
    return out


def _pairs_by_bytes(pairs: PairSet, fold_ids: np.ndarray, g: int) -> list:
    def data(i):
        x = pairs.images[i] if pairs.images is not None else pairs.paths[i].read_bytes()
        return bytes(x)

    return sorted(
        (data(a), data(b), bool(s))
        for (a, b), s, f in zip(pairs.index, pairs.same, fold_ids)
        if f == g
    )


def test_pack_bin_reproduces_assigned_folds(tmp_path):
    files = _png_files(tmp_path / "img", 6)
    rng = np.random.default_rng(0)
    triples = [(files[rng.integers(6)], files[rng.integers(6)], k % 3 == 0) for k in range(23)]
    pairs = PairSet.from_pairs(triples)
    out = pack_bin(pairs, tmp_path / "out.bin")
    packed = read_bin_pairs(out)
    assert len(packed) == 23 and packed.n_same == pairs.n_same
    want = assign_folds(pairs.same, 10, seed=0)
    for g in range(10):  # the same pairs (by image bytes and label) in every fold
        assert _pairs_by_bytes(packed, packed.folds, g) == _pairs_by_bytes(pairs, want, g)
    for i, p in enumerate(packed.paths):  # the original bytes: identical pixels
        k = int(p.name.split("#")[1])
        src = pairs.paths[pairs.index[pack_order(pairs)[k // 2], k % 2]]
        assert packed.images[i] == src.read_bytes()
        np.testing.assert_array_equal(packed.load(i), read_rgb(src))


def test_pack_bin_keeps_protocol_folds_and_warns_when_it_cannot(tmp_path):
    files = _png_files(tmp_path / "img", 4)
    triples = [(files[k % 4], files[(k + 1) % 4], k % 2 == 0) for k in range(8)]
    folds = [1, 0, 1, 0, 1, 0, 1, 0]
    pairs = PairSet.from_pairs(triples, folds=folds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = read_bin_pairs(pack_bin(pairs, tmp_path / "a.bin", n_folds=2))
    bin_folds = kfold_ids(8, 2)
    for g in range(2):
        assert _pairs_by_bytes(packed, bin_folds, g) == _pairs_by_bytes(pairs, np.array(folds), g)
    uneven = PairSet.from_pairs(triples, folds=[0, 0, 0, 0, 0, 1, 1, 1])
    with pytest.warns(BinFoldWarning, match=r"sizes \[5, 3\]"):
        pack_bin(uneven, tmp_path / "b.bin", n_folds=2)


def test_main_exit_codes(tmp_path, capsys):
    files = _png_files(tmp_path / "img", 4)
    csv = tmp_path / "pairs.csv"
    rows = [f"{files[k % 4].name},{files[(k + 1) % 4].name},{k % 2}" for k in range(12)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out.bin"
    assert main([str(csv), str(tmp_path / "img"), str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert "packed 12 pairs (6 same, 6 different; 4 distinct images)" in printed
    assert "\n" not in printed and len(read_bin_pairs(out)) == 12

    csv.write_text("\n".join(rows + ["img9.png,img0.png,1"]) + "\n")
    assert main([str(csv), str(tmp_path / "img"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "image not found" in err and "\n" not in err and "Traceback" not in err
    assert main([str(csv), str(tmp_path / "img"), str(out), "--skip-missing"]) == 0
    assert "1 skipped" in capsys.readouterr().out

    for argv in (
        [str(tmp_path / "nope.txt"), str(tmp_path), str(out)],
        [str(csv), str(tmp_path / "img")],  # OUT missing
        [str(csv), str(tmp_path / "img"), str(out), "--protocol", "nonsense"],
        [str(csv), str(tmp_path / "img"), str(tmp_path)],  # OUT is a folder
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err and "\n" not in err and "Traceback" not in err


@pytest.mark.slow
def test_lfw_view1_pair_file_and_packed_bin_score_the_same(lfw_view1, tmp_path):
    import torch

    from fvloss.data import EvalTransform
    from fvloss.eval.metrics import verify_scores
    from fvloss.eval.score import score_pairs
    from fvloss.model import EmbeddingNet

    pairs = read_pairs(lfw_view1 / "pairsDevTest.txt", lfw_view1 / "images")
    packed = read_bin_pairs(pack_bin(pairs, tmp_path / "pairsDevTest.bin"))
    torch.manual_seed(0)
    model = EmbeddingNet("resnet18", 16).eval()
    transform = EvalTransform(32)
    results = []
    for p in (pairs, packed):
        scores, kept = score_pairs(model, p, transform, flip=True)
        results.append((scores, verify_scores(scores, kept.same, kept.folds)))
    (s_file, r_file), (s_bin, r_bin) = results
    assert r_file.folds_from.startswith("assigned") and r_bin.folds_from == "file"
    for key in ("acc_mean", "acc_std", "auc", "eer"):
        assert getattr(r_bin, key) == pytest.approx(getattr(r_file, key), abs=1e-9), key
    assert r_bin.fold_acc == pytest.approx(r_file.fold_acc, abs=1e-9)  # fold g is fold g
    # per pair: the bin holds the pairs grouped by fold
    assert np.abs(s_bin - s_file[pack_order(pairs)]).max() < 1e-5
