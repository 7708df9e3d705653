"""Identification sets (fvloss.eval.idsets): identity folders, CFP's layout and CSV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fvloss.eval.fairness import cfp_pose
from fvloss.eval.idsets import from_cfp, from_csv, from_folder


def touch_images(root: Path, counts: dict[str, int], sub: str = "") -> None:
    for ident, n in counts.items():
        d = root / ident / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"{i + 1:02d}.jpg").write_bytes(b"\xff\xd8 not decoded here")


def test_folder_gallery_per_identity_and_unenrolled_share(tmp_path):
    touch_images(tmp_path, {"a": 3, "b": 1, "c": 4, "d": 2})
    s = from_folder(tmp_path, gallery_per_id=1, seed=3)
    assert sorted(s.gallery_labels) == ["a", "b", "c", "d"]
    assert sorted(s.probe_labels) == ["a", "a", "c", "c", "c", "d"]
    assert not s.open_set and "1 identities with <= 1 images: enrolled, no probes" in s.notes
    assert not set(s.gallery) & set(s.probes)
    assert from_folder(tmp_path, 1, seed=3) == s  # the same draw for the same seed
    half = from_folder(tmp_path, gallery_per_id=2, unenrolled=0.5, seed=0)
    out = set(half.probe_labels) - set(half.gallery_labels)
    assert len(out) == 2 and half.open_set
    for ident in out:  # every image of an unenrolled identity is a probe
        assert half.probe_labels.count(ident) == {"a": 3, "b": 1, "c": 4, "d": 2}[ident]
    assert "2 identities not enrolled (seed 0): non-mated probes" in half.summary()


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="identity folder not found"):
        from_folder(tmp_path / "absent")
    with pytest.raises(ValueError, match="no identity folders with images"):
        from_folder(tmp_path)
    with pytest.raises(ValueError, match="gallery_per_id must be at least 1"):
        from_folder(tmp_path, gallery_per_id=0)
    with pytest.raises(ValueError, match=r"share of the identities in \[0, 1\)"):
        from_folder(tmp_path, unenrolled=1.0)


def write_cfp(root: Path, n_ids: int = 3) -> Path:
    """CFP's layout: Protocol/Pair_list_{F,P}.txt numbering Data/Images/<id>/{frontal,profile}."""
    images = root / "Data" / "Images"
    for i in range(1, n_ids + 1):
        touch_images(images, {f"{i:03d}": 3}, "frontal")
        touch_images(images, {f"{i:03d}": 2}, "profile")
    (root / "Protocol").mkdir(parents=True)
    for kind, sub, n in (("F", "frontal", 3), ("P", "profile", 2)):
        lines = [
            f"{k + 1} ../Data/Images/{i:03d}/{sub}/{j:02d}.jpg"
            for k, (i, j) in enumerate((i, j) for i in range(1, n_ids + 1) for j in range(1, n + 1))
        ]
        (root / "Protocol" / f"Pair_list_{kind}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_cfp_frontal_gallery_profile_probes(tmp_path):
    cfp = write_cfp(tmp_path / "cfp")
    s = from_cfp(cfp)
    assert len(s.gallery) == 9 and len(s.probes) == 6 and not s.open_set
    assert all("frontal" in str(p) for p in s.gallery) and all(
        "profile" in str(p) for p in s.probes
    )
    assert s.probe_labels == ["001", "001", "002", "002", "003", "003"]
    # an aligned copy stands in for Data/Images; a missing image is named
    aligned = tmp_path / "aligned"
    touch_images(aligned, {"001": 3}, "frontal")
    with pytest.raises(FileNotFoundError, match=r"002/frontal/01.jpg: listed by .*\(12 missing\)"):
        from_cfp(cfp, root=aligned)
    s2 = from_cfp(cfp, unenrolled=0.34, seed=1)
    assert len(set(s2.gallery_labels)) == 2 and s2.open_set
    # one frontal photo enrolled a person: the other frontal ones are probes beside the profiles
    s3 = from_cfp(cfp, gallery_per_id=1, seed=2)
    assert len(s3.gallery) == 3 and len(s3.probes) == 6 + 6 and not set(s3.gallery) & set(s3.probes)
    assert sorted(cfp_pose(s3.probes)) == ["frontal"] * 6 + ["profile"] * 6


def test_csv_roles_and_bad_rows(tmp_path):
    touch_images(tmp_path, {"x": 2, "y": 1})
    f = tmp_path / "set.csv"
    f.write_text(
        "path,identity,role\nx/01.jpg,x,gallery\nx/02.jpg,x,probe\ny/01.jpg,y,distractor\n"
    )
    s = from_csv(f)
    assert (s.gallery_labels, s.probe_labels, len(s.distractors)) == (["x"], ["x"], 1)
    f.write_text("x/01.jpg,x,gallery\nx/02.jpg,x,query\n")
    with pytest.raises(ValueError, match=r"set.csv:2: expected 'path,identity,role'"):
        from_csv(f)
    f.write_text("x/01.jpg,x,gallery\nx/09.jpg,x,probe\n")
    with pytest.raises(FileNotFoundError, match=r"set.csv:2: image not found: .*x/09.jpg"):
        from_csv(f)
    f.write_text("x/01.jpg,x,gallery\n")
    with pytest.raises(ValueError, match="needs gallery and probe rows"):
        from_csv(f)
    assert np.array_equal(np.asarray(s.probe_labels), ["x"])
