"""IJB-B / IJB-C 1:1 template verification (fvloss.eval.ijb) on IJB-shaped sets built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fvloss.align.warp import ARCFACE_TEMPLATE
from fvloss.eval.ijb import (
    IJB_FARS,
    IJBFormatError,
    IJBSet,
    aligned_face,
    embed_ijb,
    evaluate_ijb,
    format_ijb,
    meta_paths,
    read_ijb,
    result_from_scores,
    template_features,
    template_scores,
    write_ijb_layout,
)

# ----------------------------------------------------------------------------- helpers


def projection_embed(dim: int = 8, side: int = 8, seed: int = 0):
    """A deterministic embed_fn: a fixed random projection of the face shrunk to side x side.

    Not mirror-symmetric, so the flip-sum changes its output. Records the batches it sees.
    """
    proj = np.random.default_rng(seed).standard_normal((side * side * 3, dim))
    calls: list[list[np.ndarray]] = []

    def embed(batch: list[np.ndarray]) -> np.ndarray:
        calls.append(batch)
        x = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA) for f in batch])
        return x.reshape(len(batch), -1).astype(np.float64) / 255.0 @ proj

    embed.calls = calls
    return embed


def noise_images(folder: Path, n: int, size: int = 48, seed: int = 0) -> list[Path]:
    """``n`` random-noise PNGs (deterministic) to stand in for loose crops."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"src_{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        paths.append(p)
    return paths


def small_layout(tmp_path: Path, name: str = "IJBC") -> tuple[Path, list[tuple], list[tuple]]:
    """6 noise images in 3 templates (template 20 has two media, one with two images)."""
    srcs = noise_images(tmp_path / "src", 6)
    lm = ARCFACE_TEMPLATE * (48 / 112)
    tm = [(10, 1), (10, 2), (20, 3), (20, 3), (20, 4), (30, 5)]
    items = [
        (p, t, m, lm + 0.25 * k, 0.5 + 0.08 * k) for k, (p, (t, m)) in enumerate(zip(srcs, tm))
    ]
    pairs = [(10, 20, 0), (10, 30, 1), (20, 30, 0)]
    return write_ijb_layout(tmp_path / name, items, pairs, name=name), items, pairs


def pooled_reference(templates, medias, emb, pairs) -> np.ndarray:
    """Media mean -> template sum -> L2 norm -> cosine, written as plain loops."""
    feats = {}
    for t in sorted(set(templates)):
        media_feats = []
        for m in sorted({m for tt, m in zip(templates, medias) if tt == t}):
            rows = [e for tt, mm, e in zip(templates, medias, emb) if tt == t and mm == m]
            media_feats.append(np.mean(rows, axis=0))
        f = np.sum(media_feats, axis=0)
        feats[t] = f / np.linalg.norm(f)
    return np.array([float(feats[a] @ feats[b]) for a, b in pairs])


def make_set(templates, medias, pairs, labels) -> IJBSet:
    n = len(templates)
    return IJBSet(
        root=Path("."),
        name="IJBC",
        image_names=[f"{i}.jpg" for i in range(n)],
        landmarks=np.zeros((n, 5, 2)),
        det_scores=np.ones(n),
        templates=np.asarray(templates, np.int64),
        medias=np.asarray(medias, np.int64),
        pairs=np.asarray(pairs, np.int64).reshape(-1, 2),
        labels=np.asarray(labels, bool),
    )


# ----------------------------------------------------------------------------- pooling


def test_pooling_matches_loop_reference():
    rng = np.random.default_rng(1)
    # Templates interleaved (not contiguous), several media per template with 1-3 images,
    # and media id 7 reused by two templates: it must stay two media.
    templates = [5, 3, 5, 9, 3, 5, 9, 9, 3, 5, 12, 3, 9]
    medias = [7, 1, 7, 7, 2, 8, 4, 4, 2, 8, 6, 1, 4]
    emb = rng.standard_normal((len(templates), 6)).astype(np.float32)
    pairs = [(3, 5), (3, 9), (5, 9), (9, 12), (12, 3), (5, 5)]
    ijb = make_set(templates, medias, pairs, [0, 1, 0, 1, 0, 1])

    ref = pooled_reference(templates, medias, emb.astype(np.float64), pairs)
    np.testing.assert_allclose(template_scores(ijb, emb), ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(template_scores(ijb, emb, chunk_size=2), ref, rtol=1e-6, atol=1e-6)

    tids, feats = template_features(ijb, emb)
    assert tids.tolist() == [3, 5, 9, 12]
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0)
    # By hand: media A = images (2, 0) and (0, 0) averages to (1, 0), media B = (0, 1); the
    # template is (1, 1) / sqrt(2), not the image sum (2, 1) normalised.
    small = make_set([1, 1, 1, 2], [1, 1, 2, 3], [(1, 2)], [0])
    e = np.array([[2.0, 0], [0, 0], [0, 1], [1, 0]])
    _, f = template_features(small, e)
    np.testing.assert_allclose(f[0], [2**-0.5, 2**-0.5])
    assert template_scores(small, e)[0] == pytest.approx(2**-0.5)

    with pytest.raises(ValueError, match="image embeddings"):
        template_scores(ijb, emb[:-1])


def test_pair_with_template_without_images_is_an_error():
    ijb = make_set([1, 2], [1, 2], [(1, 3)], [0])
    with pytest.raises(ValueError, match="template 3"):
        template_scores(ijb, np.ones((2, 4)))


# ----------------------------------------------------------------------------- embedding


def test_embed_flip_sum_and_detector_score(tmp_path):
    root, items, _ = small_layout(tmp_path)
    ijb = read_ijb(root)
    f = projection_embed()
    faces = [aligned_face(ijb, i, 32) for i in range(ijb.n_images)]
    plain = f(faces)
    mirrored = f([x[:, ::-1] for x in faces])
    scores = np.array([it[4] for it in items])[:, None]

    got = embed_ijb(ijb, f, batch_size=4, img_size=32, num_workers=0)
    np.testing.assert_allclose(got, (plain + mirrored) * scores, rtol=1e-5)
    assert got.dtype == np.float32 and got.shape == (6, 8)
    assert all(x.shape == (32, 32, 3) and x.dtype == np.uint8 for b in f.calls for x in b)

    opts = dict(img_size=32, batch_size=100, num_workers=2)
    no_flip = embed_ijb(ijb, f, flip=False, use_detector_score=False, **opts)
    np.testing.assert_allclose(no_flip, plain, rtol=1e-5)
    no_score = embed_ijb(ijb, f, use_detector_score=False, **opts)
    np.testing.assert_allclose(no_score, plain + mirrored, rtol=1e-5)
    normed = embed_ijb(ijb, f, normalize_images=True, **opts)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), scores[:, 0], rtol=1e-5)

    with pytest.raises(ValueError, match="expected \\(B, D\\)"):
        embed_ijb(ijb, lambda b: np.ones(len(b)), img_size=32)


# ----------------------------------------------------------------------------- parsing


def test_layout_round_trip(tmp_path):
    root, items, pairs = small_layout(tmp_path)
    ijb = read_ijb(root)
    assert ijb.name == "IJBC" and ijb.root == root
    assert ijb.image_names == [f"{k}.png" for k in range(1, 7)]
    np.testing.assert_array_equal(ijb.landmarks, np.stack([it[3] for it in items]))
    np.testing.assert_array_equal(ijb.det_scores, [it[4] for it in items])
    assert ijb.templates.tolist() == [it[1] for it in items]
    assert ijb.medias.tolist() == [it[2] for it in items]
    assert ijb.pairs.tolist() == [[a, b] for a, b, _ in pairs]
    assert ijb.labels.tolist() == [bool(y) for *_, y in pairs]
    assert ijb.counts() == {
        "images": 6,
        "templates": 3,
        "media": 5,
        "pairs": 3,
        "same": 1,
        "different": 2,
        "missing_images": 0,
        "dropped_templates": 0,
        "dropped_pairs": 0,
    }
    assert (ijb.image_path(2).read_bytes()) == Path(items[2][0]).read_bytes()
    # the parent folder and an explicit name find the same set; the images were copied
    shutil.rmtree(tmp_path / "src")
    assert read_ijb(tmp_path).image_names == ijb.image_names
    assert read_ijb(tmp_path, name="ijbc").n_pairs == 3


def test_ijbb_detected_from_its_files(tmp_path):
    root, _, _ = small_layout(tmp_path, name="IJBB")
    assert (root / "meta" / "ijbb_face_tid_mid.txt").is_file()
    assert read_ijb(root).name == "IJBB"
    with pytest.raises(FileNotFoundError, match="ijbc_face_tid_mid.txt"):
        read_ijb(root, name="IJBC")


@pytest.mark.parametrize(
    "which, line, text, match",
    [
        ("tid_mid", 2, "2.png 10", "line 2: expected 'image_name template_id media_id'"),
        ("tid_mid", 3, "3.png x 3", "line 3: template_id is 'x'"),
        ("landmarks", 4, "4.png 1 2 3", "line 4: expected 'image_name x1 y1"),
        ("landmarks", 1, "1.png 1 2 3 4 5 6 7 8 9 zz 0.9", "line 1: y5 is 'zz'"),
        ("landmarks", 1, "1.png 1 2 3 4 5 6 7 8 9 10 nan", "line 1: detector_score is 'nan'"),
        ("pairs", 2, "10 30", "line 2: expected 'template1 template2 label'"),
        ("pairs", 3, "20 30 2", "line 3: label is 2"),
        ("pairs", 1, "10 x 0", "line 1: template2 is 'x'"),
        ("pairs", 1, "10 99 0", "line 1: template 99 is not in ijbc_face_tid_mid.txt"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, which, line, text, match):
    root, _, _ = small_layout(tmp_path)
    path = meta_paths(root, "IJBC")[which]
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IJBFormatError, match=match) as e:
        read_ijb(root)
    assert e.value.path == str(path) and e.value.line == line


def test_missing_meta_file_and_inconsistent_lists(tmp_path):
    root, _, _ = small_layout(tmp_path)
    paths = meta_paths(root, "IJBC")
    lmk = paths["landmarks"].read_text().splitlines()

    paths["landmarks"].write_text("\n".join(lmk[:-1]) + "\n")  # 6.png has no landmarks
    with pytest.raises(IJBFormatError, match="line 6: image '6.png' has no landmarks"):
        read_ijb(root)
    paths["landmarks"].write_text("\n".join([*lmk, "7.png" + lmk[0][5:]]) + "\n")
    with pytest.raises(IJBFormatError, match="line 7: image '7.png' is not in ijbc_face_tid_mid"):
        read_ijb(root)
    paths["landmarks"].write_text("\n".join([*lmk, lmk[1]]) + "\n")
    with pytest.raises(IJBFormatError, match="line 7: image '2.png' is listed again"):
        read_ijb(root)

    paths["landmarks"].unlink()
    with pytest.raises(FileNotFoundError, match="ijbc_name_5pts_score.txt: missing IJB meta file"):
        read_ijb(root)
    with pytest.raises(FileNotFoundError, match="no IJB meta files"):
        read_ijb(tmp_path / "src")


def test_missing_images_error_or_skip(tmp_path):
    root, _, _ = small_layout(tmp_path)
    (root / "loose_crop" / "6.png").unlink()  # template 30's only image
    (root / "loose_crop" / "3.png").unlink()  # one of template 20's three
    with pytest.raises(FileNotFoundError, match="loose_crop/3.png.*2 of 6 missing.*skip_missing"):
        read_ijb(root)

    ijb = read_ijb(root, skip_missing=True)
    assert ijb.missing == ["3.png", "6.png"]
    assert ijb.image_names == ["1.png", "2.png", "4.png", "5.png"]
    assert ijb.templates.tolist() == [10, 10, 20, 20]
    assert ijb.pairs.tolist() == [[10, 20]]  # both pairs of template 30 dropped
    c = ijb.counts()
    assert (c["missing_images"], c["dropped_templates"], c["dropped_pairs"]) == (2, 1, 2)
    feats = embed_ijb(ijb, projection_embed(), img_size=32, num_workers=0)
    assert template_scores(ijb, feats).shape == (1,)


# ----------------------------------------------------------------------------- results


def test_tar_at_far_and_strict_json():
    # 4 same + 16 different pairs, hand-checkable: different scores 0.00, 0.05, ..., 0.75.
    diff = np.arange(16) * 0.05
    same = np.array([0.95, 0.9, 0.625, 0.5])
    ijb = make_set([1, 2], [1, 2], np.zeros((20, 2)), np.r_[np.ones(4), np.zeros(16)])
    r = result_from_scores(ijb, np.r_[same, diff], fars=(1e-2, 1e-1, 0.25))
    assert r.tar_at_far[1e-2].tar is None
    assert "16 different pairs" in r.tar_at_far[1e-2].reason
    # FAR <= 0.1 allows 1 false accept (0.75): accept >= 0.75 -> 0.95, 0.9 => TAR 0.5
    assert r.tar_at_far[1e-1].tar == 0.5
    assert r.tar_at_far[1e-1].threshold == pytest.approx((0.75 + 0.70) / 2)
    # FAR <= 0.25 allows 4 (0.75..0.60): accept >= 0.6 -> also 0.625 => TAR 0.75
    assert r.tar_at_far[0.25].tar == 0.75
    assert r.tar_at_far[0.25].threshold == pytest.approx((0.60 + 0.55) / 2)
    assert r.auc == pytest.approx(
        np.mean([(s > diff).mean() + 0.5 * (s == diff).mean() for s in same])
    )
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["tar_at_far"]["1e-2"]["tar"] is None and d["roc"]["thresholds"][0] is None
    thin = r.to_dict(max_roc_points=6)["roc"]
    assert len(thin["fpr"]) <= 6 < len(r.fpr)
    assert (thin["fpr"][0], thin["tpr"][0], thin["fpr"][-1], thin["tpr"][-1]) == (0, 0, 1, 1)
    assert thin["fpr"] == sorted(thin["fpr"])
    text = format_ijb(r, label="proj")
    assert "TAR@FAR=" in text and "n/a" in text and "50.00" in text and "proj" in text


# ----------------------------------------------------------------------------- end to end


N_PEOPLE, N_IMAGES = 8, 4


@pytest.fixture(scope="module")
def lfw_faces(shared_dir) -> list[tuple[str, list[tuple[Path, np.ndarray, float]]]]:
    """8 LFW people x 4 images with YuNet landmarks (people whose 4 images all have a face)."""
    from fvloss.align.detectors import detect_faces, make_detector, pick_face
    from fvloss.imageio import read_rgb

    images = shared_dir / "data" / "lfw-view1" / "images"
    model = shared_dir / "models" / "yunet_s_640_640.onnx"
    if not images.is_dir() or not model.is_file():
        pytest.skip(f"LFW images or YuNet model not found under {shared_dir}")
    det = make_detector("yunet", model=model)
    people = []
    for person in sorted(p for p in images.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))[:N_IMAGES]
        if len(files) < N_IMAGES:
            continue
        faces = []
        for f in files:
            rgb = read_rgb(f)
            face = pick_face(detect_faces(det, rgb), rgb.shape[1], rgb.shape[0])
            if face is None:
                break
            faces.append((f, face.landmarks, face.score))
        if len(faces) == N_IMAGES:
            people.append((person.name, faces))
        if len(people) == N_PEOPLE:
            return people
    pytest.skip(f"fewer than {N_PEOPLE} LFW people with {N_IMAGES} detectable faces")


def test_end_to_end_on_lfw(tmp_path, lfw_faces):
    # Per person: template 2k = images 0, 1; template 2k+1 = images 2, 3; each image its own media.
    items, label_of = [], {}
    for k, (_, faces) in enumerate(lfw_faces):
        for j, (path, lm, score) in enumerate(faces):
            t = 2 * k + j // 2
            items.append((path, t, 100 * t + j, lm, score))
            label_of[t] = k
    tids = sorted(label_of)
    pairs = [
        (a, b, int(label_of[a] == label_of[b])) for i, a in enumerate(tids) for b in tids[i + 1 :]
    ]
    write_ijb_layout(tmp_path / "IJBC", items, pairs)  # copies the images into tmp_path

    ijb = read_ijb(tmp_path)
    f = projection_embed(dim=16)
    r = evaluate_ijb(ijb, f, img_size=32, batch_size=10)

    n_pairs = 16 * 15 // 2
    assert r.scores.shape == (n_pairs,) and r.labels.sum() == N_PEOPLE
    assert r.counts["templates"] == 16 and r.counts["images"] == 32 and r.counts["media"] == 32
    assert r.counts["different"] == n_pairs - N_PEOPLE
    assert r.fpr.shape == r.tpr.shape == r.thresholds.shape
    assert r.settings["flip"] is True and r.settings["use_detector_score"] is True

    # the same scores recomputed directly: warp, flip-sum, detector weight, then loop pooling
    emb = []
    for i in range(ijb.n_images):
        face = aligned_face(ijb, i, 32)
        emb.append((f([face])[0] + f([face[:, ::-1]])[0]) * ijb.det_scores[i])
    ref = pooled_reference(ijb.templates.tolist(), ijb.medias.tolist(), emb, ijb.pairs.tolist())
    np.testing.assert_allclose(r.scores, ref, rtol=1e-5, atol=1e-6)

    assert list(r.tar_at_far) == list(IJB_FARS)
    t6 = r.tar_at_far[1e-6]
    assert t6.tar is None and t6.threshold is None and "112 different pairs" in t6.reason
    assert r.tar_at_far[1e-2].tar is not None  # 112 different pairs resolve 1e-2
    assert 0.0 <= r.auc <= 1.0
    json.dumps(r.to_dict(), allow_nan=False)
    assert format_ijb(r).splitlines()[1].startswith("TAR@FAR= 1e-6 | 1e-5")
