"""Pair protocols: LFW pairs.txt (View 1 and View 2 layouts), the assignment format, CSV, CFP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fvloss.eval.protocols import (
    PairFileError,
    PairSet,
    detect_format,
    read_assignment_pairs,
    read_csv_pairs,
    read_lfw_pairs,
    read_pairs,
)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # the parsers only check existence; decoding is tested elsewhere
    return path


def lfw_tree(root: Path, people: dict[str, int]) -> Path:
    for name, n in people.items():
        for i in range(1, n + 1):
            touch(root / name / f"{name}_{i:04d}.jpg")
    return root


PEOPLE = {"Ann_A": 4, "Bob_B": 3, "Cid_C": 2, "Dee_D": 1}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- LFW


def test_lfw_view1_single_count_header(tmp_path):
    root = lfw_tree(tmp_path / "img", PEOPLE)
    f = write(
        tmp_path / "pairsDev.txt",
        "3\nAnn_A\t1\t2\nBob_B\t1\t3\nAnn_A\t3\t4\n"
        "Ann_A\t1\tBob_B\t2\nCid_C\t2\tDee_D\t1\nAnn_A\t2\tCid_C\t1\n",
    )
    p = read_lfw_pairs(f, root)
    assert len(p) == 6 and p.n_same == 3 and p.n_different == 3
    assert p.same.tolist() == [True] * 3 + [False] * 3
    assert p.folds is None  # View 1: one set, no fold layout
    assert p.lines.tolist() == [2, 3, 4, 5, 6, 7]
    assert p.pair_paths(0) == (root / "Ann_A/Ann_A_0001.jpg", root / "Ann_A/Ann_A_0002.jpg")
    assert p.pair_paths(4) == (root / "Cid_C/Cid_C_0002.jpg", root / "Dee_D/Dee_D_0001.jpg")
    # every image once, however many pairs use it
    assert len(p.paths) == len(set(p.paths)) == 10
    assert p.n_skipped == 0 and p.source == str(f)


def test_lfw_view2_folds_from_layout(tmp_path):
    lfw_tree(tmp_path, PEOPLE)
    same = ["Ann_A 1 2", "Bob_B 2 3"]
    diff = ["Ann_A 1 Bob_B 1", "Cid_C 1 Dee_D 1"]
    body = (same + diff) * 3
    f = write(tmp_path / "pairs.txt", "3 2\n" + "\n".join(body) + "\n")
    p = read_pairs(f)  # auto-detected, root defaults to the file's folder
    assert p.format == "lfw"
    assert p.folds.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert p.same.tolist() == [True, True, False, False] * 3


def test_lfw_count_mismatch_names_file_and_header(tmp_path):
    lfw_tree(tmp_path, PEOPLE)
    f = write(tmp_path / "pairs.txt", "2\nAnn_A 1 2\nBob_B 1 2\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(PairFileError, match=r"pairs\.txt, line 1: .*4 lines.*3 pair lines"):
        read_lfw_pairs(f)


@pytest.mark.parametrize(
    "bad, why",
    [
        ("Ann_A 1", "got 2 fields"),
        ("Ann_A one 2", "'one' is not a non-negative integer"),
        ("Ann_A 1 2 3 4", "got 5 fields"),
    ],
)
def test_lfw_malformed_line(tmp_path, bad, why):
    lfw_tree(tmp_path, PEOPLE)
    f = write(tmp_path / "p.txt", f"2\nAnn_A 1 2\n{bad}\nAnn_A 1 Bob_B 1\nCid_C 1 Dee_D 1\n")
    with pytest.raises(PairFileError, match=rf"p\.txt, line 3: .*{why}") as e:
        read_lfw_pairs(f)
    assert e.value.line == 3 and e.value.path == str(f)
    p = read_lfw_pairs(f, skip_missing=True)
    assert len(p) == 3 and p.n_skipped == 1 and "line 3" in p.skipped[0]


def test_lfw_wrong_kind_for_layout(tmp_path):
    lfw_tree(tmp_path, PEOPLE)
    # a different-person line where the header's layout wants a same-person one
    f = write(
        tmp_path / "p.txt", "2\nAnn_A 1 2\nAnn_A 1 Bob_B 1\nAnn_A 1 Bob_B 1\nCid_C 1 Dee_D 1\n"
    )
    with pytest.raises(PairFileError, match="line 3: expected a same-person"):
        read_lfw_pairs(f)


def test_lfw_missing_image_error_or_count(tmp_path):
    root = lfw_tree(tmp_path / "img", PEOPLE)
    f = write(
        tmp_path / "p.txt",
        "2 1\nAnn_A 1 2\nAnn_A 1 Bob_B 1\nBob_B 1 9\nCid_C 1 Dee_D 1\n",
    )
    with pytest.raises(PairFileError, match=r"line 4: image not found: .*Bob_B_0009\.jpg"):
        read_lfw_pairs(f, root)
    p = read_lfw_pairs(f, root, skip_missing=True)
    assert len(p) == 3 and p.n_skipped == 1 and "Bob_B_0009.jpg" in p.skipped[0]
    # fold ids still follow the file's layout after the drop
    assert p.folds.tolist() == [0, 0, 1]
    assert p.lines.tolist() == [2, 3, 5]


def test_lfw_missing_image_hints_at_images_folder(tmp_path):
    lfw_tree(tmp_path / "images", PEOPLE)
    f = write(tmp_path / "p.txt", "1\nAnn_A 1 2\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(PairFileError, match="did you mean --root"):
        read_lfw_pairs(f, tmp_path)


def test_lfw_bad_header(tmp_path):
    f = write(tmp_path / "p.txt", "Ann_A 1 2\n")
    with pytest.raises(PairFileError, match="line 1: expected an LFW header"):
        read_lfw_pairs(f)


def test_all_pairs_skipped_is_an_error(tmp_path):
    f = write(tmp_path / "p.txt", "1\nAnn_A 1 2\nAnn_A 1 Bob_B 1\n")
    with pytest.raises(PairFileError, match=r"no usable pairs \(2 skipped\)"):
        read_pairs(f, skip_missing=True)


# ----------------------------------------------------------------------------- assignment


def test_assignment_format_jpg_and_png(tmp_path):
    for name in ("ann_1.jpg", "ann_2.png", "bob_1.jpg", "bob_12.png"):
        touch(tmp_path / "faces" / name)
    f = write(tmp_path / "pairs.txt", "ann 1 2\n\nann 1 bob 12\nbob 1 12\n")
    p = read_pairs(f, tmp_path / "faces")
    assert p.format == "assignment"
    assert p.same.tolist() == [True, False, True]
    assert p.lines.tolist() == [1, 3, 4]
    assert p.pair_paths(0) == (tmp_path / "faces/ann_1.jpg", tmp_path / "faces/ann_2.png")
    assert p.pair_paths(1)[1] == tmp_path / "faces/bob_12.png"
    assert p.folds is None


def test_assignment_missing_and_malformed(tmp_path):
    touch(tmp_path / "ann_1.jpg")
    touch(tmp_path / "ann_2.jpg")
    f = write(tmp_path / "pairs.txt", "ann 1 2\nann 1 3\nann x 2\nann 1 2\n")
    with pytest.raises(PairFileError, match=r"line 2: image not found: tried ann_3\.jpg"):
        read_assignment_pairs(f)
    p = read_assignment_pairs(f, skip_missing=True)
    assert len(p) == 2 and p.n_skipped == 2
    assert "line 2" in p.skipped[0] and "line 3" in p.skipped[1]


# ----------------------------------------------------------------------------- CSV


def test_csv_with_header_relative_and_absolute(tmp_path):
    a, b = touch(tmp_path / "x" / "a.jpg"), touch(tmp_path / "x" / "b.png")
    elsewhere = touch(tmp_path / "other" / "c.jpg")
    f = write(
        tmp_path / "x" / "pairs.csv",
        f"path1,path2,same\na.jpg,b.png,1\nb.png,{elsewhere},0\n a.jpg , b.png , True\n",
    )
    p = read_pairs(f)
    assert p.format == "csv"
    assert p.same.tolist() == [True, False, True]
    assert p.pair_paths(1) == (b, elsewhere)
    assert p.pair_paths(2) == (a, b)
    assert p.lines.tolist() == [2, 3, 4]


def test_csv_without_header(tmp_path):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    f = write(tmp_path / "p.csv", "a.jpg,b.jpg,same\nb.jpg,a.jpg,different\n")
    assert read_csv_pairs(f).same.tolist() == [True, False]


def test_csv_bad_rows(tmp_path):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    f = write(tmp_path / "p.csv", "a.jpg,b.jpg,1\na.jpg,b.jpg\na.jpg,b.jpg,maybe\na.jpg,z.jpg,0\n")
    with pytest.raises(PairFileError, match="p.csv, line 2: expected 3 columns"):
        read_csv_pairs(f)
    p = read_csv_pairs(f, skip_missing=True)
    assert len(p) == 1 and p.n_skipped == 3
    assert "'maybe'" in p.skipped[1] and "z.jpg" in p.skipped[2]


def test_csv_first_row_typo_is_not_taken_for_a_header(tmp_path):
    touch(tmp_path / "a.jpg")
    touch(tmp_path / "b.jpg")
    f = write(tmp_path / "p.csv", "a.jpg,b.jpg,sme\nb.jpg,a.jpg,0\n")
    with pytest.raises(PairFileError, match="line 1: 'same' must be"):
        read_csv_pairs(f)


# ----------------------------------------------------------------------------- misc


def test_detect_format(tmp_path):
    assert detect_format(write(tmp_path / "a.txt", "\n10\t300\nx 1 2\n")) == "lfw"
    assert detect_format(write(tmp_path / "b.txt", "ann 1 2\n")) == "assignment"
    assert detect_format(write(tmp_path / "c.txt", "a.jpg,b.jpg,1\n")) == "csv"
    assert detect_format(write(tmp_path / "d.csv", "a b c\n")) == "csv"
    with pytest.raises(ValueError, match="unknown pair format"):
        read_pairs(tmp_path / "a.txt", format="xml")
    with pytest.raises(PairFileError, match="cannot read pair file"):
        read_pairs(tmp_path / "missing.txt", format="lfw")


def test_subset_and_from_pairs():
    p = PairSet.from_pairs(
        [("a", "b", True), ("a", "c", False), ("c", "d", False)], folds=[0, 1, 1]
    )
    assert [str(x) for x in p.paths] == ["a", "b", "c", "d"]
    q = p.subset(np.array([False, True, True]), ["dropped one"])
    assert [str(x) for x in q.paths] == ["a", "c", "d"]
    assert [tuple(map(str, q.pair_paths(k))) for k in range(2)] == [("a", "c"), ("c", "d")]
    assert q.folds.tolist() == [1, 1] and q.skipped == ["dropped one"]
    assert q.same.tolist() == [False, False]


def test_lfw_view1_devtest_finds_every_image(lfw_view1):
    p = read_pairs(lfw_view1 / "pairsDevTest.txt", lfw_view1 / "images")
    assert p.format == "lfw"
    assert len(p) == 1000 and p.n_same == 500 and p.n_skipped == 0
    assert p.folds is None
    assert all(path.is_file() for path in p.paths)
    assert len(p.paths) == len(set(p.paths))


# ----------------------------------------------------------------------------- CFP


def cfp_tree(root: Path, n_ids: int = 4, folds: int = 2) -> Path:
    """A CFP-shaped folder: ``Data/Images/<id>/{frontal,profile}/NN.jpg`` and ``Protocol/``
    with numbered pair lists and ``Split/{FF,FP}/<fold>/{same,diff}.txt``."""
    lines = {"F": [], "P": []}
    for i in range(1, n_ids + 1):
        for kind, n in (("frontal", 3), ("profile", 2)):
            for j in range(1, n + 1):
                touch(root / "Data" / "Images" / f"{i:03d}" / kind / f"{j:02d}.jpg")
                key = "F" if kind == "frontal" else "P"
                lines[key].append(
                    f"{len(lines[key]) + 1} ../Data/Images/{i:03d}/{kind}/{j:02d}.jpg"
                )
    proto = root / "Protocol"
    proto.mkdir(parents=True)
    for key in "FP":
        write(proto / f"Pair_list_{key}.txt", "\n".join(lines[key]) + "\n")
    for split in ("FF", "FP"):
        for g in range(1, folds + 1):
            d = proto / "Split" / split / f"{g:02d}"
            d.mkdir(parents=True)
            # id g: frontal 1 vs frontal 2 / profile 1 (same); id g vs id g+1 (different)
            second = 2 if split == "FF" else 1
            write(
                d / "same.txt",
                f"{3 * (g - 1) + 1},{second if split == 'FF' else 2 * (g - 1) + 1}\n",
            )
            write(
                d / "diff.txt",
                f"{3 * (g - 1) + 1},{second + 3 * g if split == 'FF' else 2 * g + 1}\n",
            )
    return root


@pytest.mark.parametrize("protocol", ["cfp-fp", "cfp-ff"])
def test_cfp_protocol_pairs_and_folds(tmp_path, protocol):
    root = cfp_tree(tmp_path / "cfp")
    pairs = read_pairs(root, format=protocol)
    assert pairs.name == protocol and pairs.format == protocol and len(pairs) == 4
    assert pairs.same.tolist() == [True, False, True, False]
    assert pairs.folds.tolist() == [0, 0, 1, 1]
    a, b = (p.relative_to(root / "Data" / "Images").as_posix() for p in pairs.pair_paths(0))
    assert a == "001/frontal/01.jpg"
    assert b == ("001/frontal/02.jpg" if protocol == "cfp-ff" else "001/profile/01.jpg")
    a, b = (p.relative_to(root / "Data" / "Images").as_posix() for p in pairs.pair_paths(3))
    assert a == "002/frontal/01.jpg"
    assert b == ("003/frontal/02.jpg" if protocol == "cfp-ff" else "003/profile/01.jpg")
    # the Protocol folder itself works too, and --root replaces Data/Images
    aligned = tmp_path / "aligned"
    for p in pairs.paths:
        touch(aligned / p.relative_to(root / "Data" / "Images"))
    moved = read_pairs(root / "Protocol", aligned, format=protocol)
    assert all(str(p).startswith(str(aligned)) for p in moved.paths)
    assert moved.same.tolist() == pairs.same.tolist()


def test_cfp_folder_needs_a_protocol_name(tmp_path):
    root = cfp_tree(tmp_path / "cfp")
    with pytest.raises(PairFileError, match="cfp-fp or cfp-ff"):
        read_pairs(root)
    with pytest.raises(PairFileError, match="not a CFP folder"):
        read_pairs(tmp_path, format="cfp-fp")


def test_cfp_bad_lines_and_missing_images(tmp_path):
    root = cfp_tree(tmp_path / "cfp")
    same = root / "Protocol" / "Split" / "FP" / "02" / "same.txt"
    write(same, "4;2\n")
    with pytest.raises(PairFileError, match=r"same.txt, line 1: expected 'a,b'"):
        read_pairs(root, format="cfp-fp")
    write(same, "4,99\n")
    with pytest.raises(PairFileError, match="99 is not in Pair_list_P.txt"):
        read_pairs(root, format="cfp-fp")
    write(same, "4,4\n")  # profile 4 = 002/profile/02, used by this pair only
    (root / "Data" / "Images" / "002" / "profile" / "02.jpg").unlink()
    with pytest.raises(PairFileError, match=r"same.txt, line 1: image not found: .*002/profile/02"):
        read_pairs(root, format="cfp-fp")
    kept = read_pairs(root, format="cfp-fp", skip_missing=True)
    assert len(kept) == 3 and kept.n_skipped == 1
    assert kept.skipped[0].startswith("FP/02/same.txt, line 1: image not found")


def test_cfp_official_protocol(shared_dir):
    cfp = shared_dir / "data" / "cfp"
    if not (cfp / "Protocol" / "Split" / "FP").is_dir():
        pytest.skip(f"CFP not found under {cfp}")
    for protocol, n_images in (("cfp-fp", 5901), ("cfp-ff", 4764)):
        pairs = read_pairs(cfp, format=protocol)
        assert len(pairs) == 7000 and pairs.n_same == 3500 and pairs.n_skipped == 0
        assert np.bincount(pairs.folds).tolist() == [700] * 10
        for g in range(10):  # 350 same then 350 different in every fold
            assert pairs.same[pairs.folds == g].sum() == 350
        assert len(pairs.paths) == n_images
        kinds = {p.parent.name for p in pairs.paths}
        assert kinds == ({"frontal", "profile"} if protocol == "cfp-fp" else {"frontal"})
