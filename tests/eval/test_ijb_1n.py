"""IJB-B / IJB-C 1:N identification (fvloss.eval.ijb_1n): the meta files, template pooling
into galleries and probes, G1 / G2 open set and the merged closed set; end to end on an
IJB-shaped set built from ../shared CFP photos (frontal templates enrolled, profile probes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_ijb import make_set, noise_images, projection_embed

from fvloss.align.warp import ARCFACE_TEMPLATE
from fvloss.eval.identify import identify
from fvloss.eval.ijb import IJBFormatError, embed_ijb, read_ijb, write_ijb_layout
from fvloss.eval.ijb_1n import evaluate_ijb_1n, ident_paths, read_1n_lists, write_1n_lists


def at(*degrees: float) -> np.ndarray:
    r = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_templates_pool_then_rank_against_one_gallery_or_both():
    # Templates 1, 2 (subjects 100, 200) in G1; 3 (300) in G2; probes 11 (100), 12 (300).
    # Template 1 pools two stills at 0 and 20 deg (its feature points at 10 deg).
    templates = [1, 1, 2, 3, 11, 12]
    ijb = make_set(templates, list(range(6)), np.zeros((0, 2)), [])
    emb = at(0, 20, 60, 90, 12, 80)
    lists = {"G1": {1: 100, 2: 200}, "G2": {3: 300}, "probe": {11: 100, 12: 300}}
    res, counts = evaluate_ijb_1n(ijb, lists, emb, "G1", max_rank=2, fpirs=(0.5,))
    # G1: probe 11 (12 deg) finds template 1 (10 deg) first: rank 1; probe 12 is non-mated.
    assert (res.n_mated, res.n_nonmated, res.cmc) == (1, 1, [1.0, 1.0])
    assert counts == {"G1": 2, "dropped_G1": 0, "probe": 2, "dropped_probe": 0}
    both, counts = evaluate_ijb_1n(ijb, lists, emb, "both", max_rank=2)
    # G1 + G2: probe 12 (80 deg) finds 3 (90 deg, cos 10) above 2 (60 deg, cos 20): rank 1.
    assert (both.n_mated, both.n_nonmated, both.cmc) == (2, 0, [1.0, 1.0])
    assert counts["G1+G2"] == 3
    g2, _ = evaluate_ijb_1n(ijb, lists, emb, "G2", max_rank=1)
    assert (g2.n_mated, g2.n_nonmated) == (1, 1)
    with pytest.raises(ValueError, match="gallery must be one of"):
        evaluate_ijb_1n(ijb, lists, emb, "G3")
    lists["probe"] = {99: 100}  # a template without images
    with pytest.raises(ValueError, match="no probe template has images"):
        evaluate_ijb_1n(ijb, lists, emb, "G1")


def test_meta_files_round_trip_and_errors(tmp_path):
    lm = ARCFACE_TEMPLATE * (48 / 112)
    srcs = noise_images(tmp_path / "src", 3)
    items = [(p, t, t, lm, 0.9) for p, t in zip(srcs, (1, 2, 3))]
    root = write_ijb_layout(tmp_path / "IJBB", items, [], name="IJBB")
    lists = {"G1": {1: 7}, "G2": {2: 8}, "probe": {3: 7}}
    write_1n_lists(root, "IJBB", lists)
    assert ident_paths(root, "IJBB")["G1"].name == "ijbb_1N_gallery_S1.csv"
    assert read_1n_lists(tmp_path) == lists  # IJBB found from its files
    assert read_ijb(tmp_path, pairs=False).n_images == 3
    g1 = ident_paths(root, "IJBB")["G1"]
    g1.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n1,7,a.jpg\n1,9,b.jpg\n")
    with pytest.raises(
        IJBFormatError, match=r"S1.csv, line 3: template 1 is subject 9 here, 7 on line 2"
    ):
        read_1n_lists(root)
    g1.write_text("TEMPLATE_ID,SUBJECT_ID\n1,8\n")
    with pytest.raises(IJBFormatError, match="1 subjects are in both galleries"):
        read_1n_lists(root)
    g1.write_text("TEMPLATE_ID,SUBJECT_ID\nx,8\n")
    with pytest.raises(IJBFormatError, match=r"line 2: expected TEMPLATE_ID,SUBJECT_ID"):
        read_1n_lists(root)
    g1.unlink()
    with pytest.raises(FileNotFoundError, match="missing IJB 1:N meta file"):
        read_1n_lists(root)


N_IDS = 6


@pytest.fixture(scope="module")
def cfp_faces(shared_dir) -> list[tuple[list, list]]:
    """6 CFP identities: 3 frontal and 2 profile photos each, with YuNet landmarks."""
    from fvloss.align.detectors import detect_faces, make_detector, pick_face
    from fvloss.imageio import read_rgb

    images = shared_dir / "data" / "cfp" / "Data" / "Images"
    model = shared_dir / "models" / "yunet_s_640_640.onnx"
    if not images.is_dir() or not model.is_file():
        pytest.skip(f"CFP images or YuNet model not found under {shared_dir}")
    det = make_detector("yunet", model=model)

    def faces(files: list[Path]) -> list | None:
        out = []
        for f in files:
            rgb = read_rgb(f)
            face = pick_face(detect_faces(det, rgb), rgb.shape[1], rgb.shape[0])
            if face is None:
                return None
            out.append((f, face.landmarks, face.score))
        return out

    people = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        front = faces(sorted((person / "frontal").glob("*.jpg"))[:3])
        side = front and faces(sorted((person / "profile").glob("*.jpg"))[:2])
        if front and side:
            people.append((front, side))
        if len(people) == N_IDS:
            return people
    pytest.skip(f"fewer than {N_IDS} CFP identities with detectable faces")


def test_end_to_end_on_cfp_frontal_gallery_profile_probes(tmp_path, cfp_faces):
    # Identity k: template 100 + k = its 3 frontal photos (G1 for k < 3, else G2); template
    # 200 + k = its 2 profile photos (a probe). Each photo is its own media.
    items, lists = [], {"G1": {}, "G2": {}, "probe": {}}
    for k, (front, side) in enumerate(cfp_faces):
        for j, (path, lm, score) in enumerate(front):
            items.append((path, 100 + k, 1000 + 10 * k + j, lm, score))
        for j, (path, lm, score) in enumerate(side):
            items.append((path, 200 + k, 2000 + 10 * k + j, lm, score))
        lists["G1" if k < 3 else "G2"][100 + k] = k
        lists["probe"][200 + k] = k
    write_ijb_layout(tmp_path / "IJBC", items, [])
    write_1n_lists(tmp_path / "IJBC", "IJBC", lists)
    ijb = read_ijb(tmp_path, pairs=False)
    emb = embed_ijb(ijb, projection_embed(dim=16), img_size=32, batch_size=8)
    res, counts = evaluate_ijb_1n(ijb, read_1n_lists(tmp_path), emb, "G1", max_rank=3)
    assert (res.n_gallery, res.n_mated, res.n_nonmated) == (3, 3, 3)
    # the same from plain loops: media mean -> template sum -> L2 norm, then identify
    feat = {}
    for t in sorted(set(ijb.templates.tolist())):
        f = emb[ijb.templates == t].sum(axis=0)  # one image per media
        feat[t] = f / np.linalg.norm(f)
    g = np.stack([feat[100 + k] for k in range(3)])
    p = np.stack([feat[200 + k] for k in range(N_IDS)])
    want = identify(g, [0, 1, 2], p, list(range(N_IDS)), open_set=True, max_rank=3)
    assert res.cmc == pytest.approx(want.cmc) and res.tpir == pytest.approx(want.tpir)
    both, counts = evaluate_ijb_1n(ijb, read_1n_lists(tmp_path), emb, "both", max_rank=3)
    assert (both.n_gallery, both.n_mated, counts["G1+G2"]) == (6, 6, 6)
