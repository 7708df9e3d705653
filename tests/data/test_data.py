"""Identity folders: scanning, splitting by identity, and the DataLoaders' pixels and labels."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fvloss.data import (
    AlbumentationsTransform,
    DataReport,
    eval_pipeline,
    face_dls,
    scan_identities,
    split_identities,
    train_pipeline,
)
from fvloss.imageio import ImageReadError


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def plain(v: int = 128, size: int = 8) -> np.ndarray:
    return np.full((size, size, 3), v, np.uint8)


# ----------------------------------------------------------------------------- scanning


@pytest.fixture
def messy(tmp_path) -> Path:
    """alice (3), bob (2), carol (1 image), dave (one in a sub-folder), eve (1 good + 1 cut
    JPEG + a text file), an empty folder, a hidden folder and a loose image under the root."""
    root = tmp_path / "faces"
    for i in range(3):
        write_png(root / "alice" / f"a{i}.png", plain(10 * i))
    for i in range(2):
        write_png(root / "bob" / f"b{i}.jpg", plain(50))
    write_png(root / "carol" / "c0.png", plain(90))
    write_png(root / "dave" / "d0.png", plain(100))
    write_png(root / "dave" / "sub" / "d1.png", plain(110))
    write_png(root / "eve" / "e0.png", plain(120))
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    (root / "eve" / "e1.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    (root / "eve" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    write_png(root / ".hidden" / "h.png", plain(1))
    write_png(root / "loose.png", plain(2))
    (root / "README.txt").write_text("a loose non-image")
    return root


def test_scan_raises_on_a_bad_file_by_default(messy):
    with pytest.raises(ImageReadError) as e:
        scan_identities(messy)
    assert e.value.path == str(messy / "eve" / "e1.jpg")
    assert str(messy / "eve" / "e1.jpg") in str(e.value)
    assert "skip_bad" in str(e.value)


def test_scan_skip_bad_reports_everything(messy):
    index = scan_identities(messy, skip_bad=True)
    r = index.report
    assert isinstance(r, DataReport)
    assert index.identities == ["alice", "bob", "carol", "dave", "eve"]
    assert r.n_identities == 5 and r.n_images == 3 + 2 + 1 + 2 + 1 == len(index.items)
    assert r.empty_identities == ["empty"]
    assert r.single_image_identities == ["carol", "eve"]
    assert [p for p, _ in r.bad_files] == [str(messy / "eve" / "e1.jpg")]
    assert "truncated JPEG" in r.bad_files[0][1]
    assert r.loose_files == 1  # loose.png; README.txt is not an image
    assert messy / "dave" / "sub" / "d1.png" in index.items
    assert all(".hidden" not in str(p) and p.suffix != ".txt" for p in index.items)
    # items are sorted and labelled by their top folder
    assert index.items == sorted(index.items)
    assert [(p.relative_to(messy).parts[0]) for p in index.items] == index.labels
    d = r.to_dict()
    assert (d["n_bad_files"], d["n_empty_identities"], d["n_loose_files"]) == (1, 1, 1)
    s = r.summary()
    for piece in (
        "9 images of 5 identities",
        "1 empty",
        "2 one-image",
        "1 unreadable",
        "1 images outside",
    ):
        assert piece in s, s


def test_scan_check_none_trusts_files(messy):
    index = scan_identities(messy, check="none")
    assert messy / "eve" / "e1.jpg" in index.items and not index.report.bad_files


def test_scan_check_full_decodes(messy):
    # a file that passes the quick check (right signature and end) but does not decode
    bad = messy / "bob" / "b9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100 + b"IEND\xaeB`\x82")
    assert bad in scan_identities(messy, skip_bad=True).items
    index = scan_identities(messy, check="full", skip_bad=True)
    assert bad not in index.items
    assert str(bad) in [p for p, _ in index.report.bad_files]


def test_scan_errors(tmp_path, messy):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_identities(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="check"):
        scan_identities(messy, check="thorough")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", plain())
    with pytest.raises(ValueError, match="no images"):
        scan_identities(tmp_path / "flat")


# ----------------------------------------------------------------------------- splitting


NAMES = [f"id{i:02d}" for i in range(20)]


def test_split_is_deterministic_disjoint_and_complete():
    train, valid = split_identities(NAMES, 0.25, seed=7)
    assert (train, valid) == split_identities(list(reversed(NAMES)) + NAMES[:3], 0.25, seed=7)
    assert not set(train) & set(valid)
    assert sorted(train + valid) == NAMES
    assert len(valid) == 5 and train == sorted(train) and valid == sorted(valid)
    others = {tuple(split_identities(NAMES, 0.25, seed=s)[1]) for s in range(8)}
    assert len(others) > 1  # the seed matters


def test_split_ignores_global_random_state():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    a = split_identities(NAMES, 0.1, seed=3)
    random.seed(2)
    np.random.seed(2)
    torch.manual_seed(2)
    [random.random() for _ in range(17)]
    state = random.getstate()
    b = split_identities(NAMES, 0.1, seed=3)
    assert a == b
    assert random.getstate() == state  # and does not consume the global RNG


def test_split_sizes():
    assert len(split_identities(NAMES, 0.1)[1]) == 2
    assert len(split_identities(NAMES[:4], 0.1)[1]) == 2  # at least 2 from 4 identities up
    assert split_identities(NAMES[:3], 0.1) == (NAMES[:3], [])
    assert split_identities(NAMES, 0.0) == (NAMES, [])
    with pytest.raises(ValueError):
        split_identities(NAMES, 1.0)
    with pytest.raises(ValueError, match="too few"):
        split_identities(NAMES[:3], 0.5)


# ----------------------------------------------------------------------------- DataLoaders

SIZE = 32
N_IDS, PER_ID = 8, 4


def colours(k: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Left-half and right-half colours of identity k; 0 and 255 both occur."""
    v = 255 * k // (N_IDS - 1)
    return (v, 255 - v, 0), (0, v, 255)


def halves(k: int) -> np.ndarray:
    left, right = colours(k)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:, : SIZE // 2], img[:, SIZE // 2 :] = left, right
    return img


def normed(rgb) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - 0.5) / 0.5


@pytest.fixture(scope="module")
def halves_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("halves")
    for k in range(N_IDS):
        for j in range(PER_ID):
            write_png(root / f"p{k}" / f"{j}.png", halves(k))
    return root


@pytest.fixture(scope="module", params=["off", "on"])
def dls(halves_root, request):
    """Both paths: per-image Albumentations (off) and preloaded + device augmentation (on)."""
    return face_dls(
        halves_root, img_size=SIZE, bs=8, valid_pct=0.25, seed=1, num_workers=0,
        preload=request.param,
    )  # fmt: skip


def orientation(x: torch.Tensor, k: int) -> str:
    """'plain' or 'flipped' if the CHW tensor x is identity k's image normalised, else fail."""
    left, right = normed(colours(k)[0]), normed(colours(k)[1])
    h = SIZE // 2
    lx, rx = x[:, :, :h], x[:, :, h:]
    if torch.allclose(lx, left[:, None, None], atol=1e-6) and torch.allclose(
        rx, right[:, None, None], atol=1e-6
    ):
        return "plain"
    if torch.allclose(lx, right[:, None, None], atol=1e-6) and torch.allclose(
        rx, left[:, None, None], atol=1e-6
    ):
        return "flipped"
    pytest.fail(f"identity {k}: pixels are neither its image nor its mirror: {x[:, 0, [0, -1]]}")


def ident(dls, label: int) -> int:
    return int(dls.vocab[label][1:])


def test_labels_and_split(dls):
    assert dls.n_classes == 6 and len(dls.valid_identities) == 2
    assert not set(dls.train_identities) & set(dls.valid_identities)
    assert list(dls.vocab[: dls.n_classes]) == dls.train_identities
    assert list(dls.vocab[dls.n_classes :]) == dls.valid_identities
    assert (dls.train_identities, dls.valid_identities) == split_identities(
        [f"p{k}" for k in range(N_IDS)], 0.25, 1
    )
    train_labels = torch.cat([y for _, y in dls.train])
    assert set(train_labels.tolist()) == set(range(dls.n_classes))
    valid_labels = torch.cat([y for _, y in dls.valid])
    assert len(valid_labels) == 2 * PER_ID
    assert (valid_labels >= dls.n_classes).all()
    for y in train_labels.tolist():
        assert dls.vocab[y] in dls.train_identities
    assert dls.report.n_identities == N_IDS


def test_train_batch_is_normalised_once(dls):
    xb, yb = dls.one_batch()
    assert xb.dtype == torch.float32 and xb.shape == (8, 3, SIZE, SIZE)
    assert xb.min().item() >= -1.0 and xb.max().item() <= 1.0
    for x, y in zip(xb, yb):
        orientation(x, ident(dls, int(y)))  # every pixel is (v/255 - 0.5)/0.5 of its colour
    # 0 and 255 occur in every image: min -1 and max +1 exactly (not ~-1 after a second /255)
    assert xb.min().item() == -1.0 and xb.max().item() == 1.0


def test_valid_pipeline_never_flips(dls):
    for _ in range(3):
        for xb, yb in dls.valid:
            for x, y in zip(xb, yb):
                assert orientation(x, ident(dls, int(y))) == "plain"


def test_train_pipeline_flips_sometimes(dls):
    seen = []
    for _ in range(4):
        for xb, yb in dls.train:
            seen += [orientation(x, ident(dls, int(y))) for x, y in zip(xb, yb)]
    assert len(seen) == 4 * 24
    assert 0 < seen.count("flipped") < len(seen)


@pytest.mark.parametrize("preload", ["off", "on"])
def test_no_flip_when_hflip_is_zero(halves_root, preload):
    dls = face_dls(
        halves_root, img_size=SIZE, bs=8, valid_pct=0.25, seed=1, hflip=0, num_workers=0,
        preload=preload,
    )  # fmt: skip
    for xb, yb in dls.train:
        assert all(orientation(x, ident(dls, int(y))) == "plain" for x, y in zip(xb, yb))


def test_resize_and_decode(dls):
    kw = {"img_size": 16, "bs": 4, "valid_pct": 0.25, "seed": 1, "num_workers": 0}
    pre = face_dls(dls.report.root, preload="on", **kw)
    xb, _ = pre.one_batch()
    assert xb.shape == (4, 3, 16, 16) and xb.dtype == torch.float32
    back = pre.train.decode_batch(xb)
    torch.testing.assert_close(back, (xb * 0.5 + 0.5).clamp(0, 1))
    fig = pre.show_batch(max_n=4, ncols=2)  # fastai's dls.show_batch, on the preloaded path
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and set(titles) <= set(pre.train_identities)
    big = face_dls(dls.report.root, preload="off", **kw)
    xb, _ = big.one_batch()
    assert xb.shape == (4, 3, 16, 16)
    (tfm,) = [t for t in big.train.after_item.fs if isinstance(t, AlbumentationsTransform)]
    back = tfm.decodes(xb)  # back to [0, 1] for show_batch
    assert back.min() >= 0 and back.max() <= 1
    torch.testing.assert_close(back, xb * 0.5 + 0.5)


def test_pipelines():
    img = halves(3)
    out = eval_pipeline(SIZE)(image=img)["image"]
    assert out.dtype == np.float32 and out.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(out[0, 0], normed(colours(3)[0]).numpy(), atol=1e-6)
    extra = [{"transform": "RandomBrightnessContrast", "p": 1.0}]
    assert len(train_pipeline(SIZE, extra=extra).transforms) == 4
    with pytest.raises(ValueError, match="NoSuchTransform"):
        train_pipeline(SIZE, extra=[{"transform": "NoSuchTransform"}])


def test_extra_augmentation_typos_are_errors():
    # Albumentations warns about an unknown argument and drops it; an experiment file with a typo
    # must not train silently without the augmentation it asked for.
    with pytest.raises(ValueError, match=r"Affine.*'scal'"):
        train_pipeline(SIZE, extra=[{"transform": "Affine", "scal": [0.9, 1.1]}])
    with pytest.raises(ValueError, match="Affine"):
        train_pipeline(SIZE, extra=[{"transform": "Affine", "scale": "big"}])
    with pytest.raises(ValueError, match="unknown albumentations transform None"):
        train_pipeline(SIZE, extra=[{"p": 0.5}])
    tfm = train_pipeline(SIZE, extra=[{"transform": "Affine", "scale": [0.9, 1.1], "p": 1.0}])
    assert type(tfm.transforms[2]).__name__ == "Affine"
    assert tfm.transforms[2].p == 1.0


# ----------------------------------------------------------------------------- seeding

JITTER = [
    {"transform": "Affine", "rotate": [-20, 20], "p": 1.0},
    {"transform": "RandomBrightnessContrast", "p": 1.0},
]


def _augmenter() -> AlbumentationsTransform:
    return AlbumentationsTransform(train_pipeline(32, 0.5, extra=JITTER), eval_pipeline(32))


def test_torch_seed_fixes_the_augmentation():
    """fastai's set_seed (torch.manual_seed) does not reach Albumentations' own generators; the
    transform re-seeds them from torch, so one seed gives the same augmented images."""
    img = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)

    def draws(seed: int, tfm) -> list[np.ndarray]:
        torch.manual_seed(seed)
        return [tfm(img, split_idx=0).numpy() for _ in range(4)]

    tfm = _augmenter()
    first = draws(42, tfm)
    assert not np.array_equal(first[0], first[1])  # the pipeline does draw
    again = draws(42, tfm)  # the same object, re-seeded
    fresh = draws(42, _augmenter())  # a new pipeline
    for a, b, c in zip(first, again, fresh):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.array_equal(draws(43, tfm)[0], first[0])


class _Augmented(torch.utils.data.Dataset):
    def __init__(self):
        self.tfm = _augmenter()
        self.img = np.full((40, 40, 3), 128, np.uint8)
        self.img[:, :20] = 30  # asymmetric, so a flip shows

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return self.tfm(self.img, split_idx=0)


def test_workers_draw_their_own_deterministic_augmentations():
    def epoch(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(_Augmented(), batch_size=4, num_workers=2)
        return torch.cat(list(loader))

    a, b = epoch(7), epoch(7)
    assert torch.equal(a, b)  # same seed, same augmentations, worker by worker
    assert not torch.equal(a[:4], a[4:])  # the two workers do not repeat each other
    assert not torch.equal(a, epoch(8))


# ----------------------------------------------------------------------------- seeded loader


def _epoch(dls, epoch: int, start_batch: int = 0) -> list[torch.Tensor]:
    dls.train.set_epoch(epoch, start_batch)
    return [x for x, _ in dls.train]


@pytest.mark.parametrize("preload", ["off", "on"])
def test_batches_are_functions_of_seed_and_epoch(halves_root, preload):
    """SeededDL and PreloadedDL: the batches of epoch e do not depend on the workers, on
    torch's generator or on where the epoch started, only on (seed, e)."""
    kw = {"img_size": SIZE, "bs": 4, "seed": 3, "extra_aug": JITTER, "preload": preload}
    ref = face_dls(halves_root, num_workers=0, **kw)
    first = _epoch(ref, 0)
    torch.manual_seed(999)  # what the model draws in between changes nothing
    again = _epoch(ref, 0)
    workers = _epoch(face_dls(halves_root, num_workers=2, **kw), 0)
    tail = _epoch(ref, 0, start_batch=2)
    assert len(first) >= 3 and len(tail) == len(first) - 2
    for a, b, c in zip(first, again, workers, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert all(torch.equal(a, t) for a, t in zip(first[2:], tail, strict=True))
    # another epoch or another seed: another order and other augmentations
    assert not torch.equal(torch.cat(first), torch.cat(_epoch(ref, 1)))
    other = face_dls(halves_root, num_workers=0, **{**kw, "seed": 4})
    assert not torch.equal(first[0], _epoch(other, 0)[0])


def _rows(batches: list[torch.Tensor]) -> list[bytes]:
    return sorted(t.numpy().tobytes() for b in batches for t in b)


@pytest.mark.parametrize("preload", ["off", "on"])
def test_sharded_ranks_take_the_global_batch_between_them(halves_root, preload):
    """Rank r of W takes items r, r+W, ... of the epoch's seeded order: global step k on W ranks
    with batch b is step k of one process with batch W*b, augmentations included."""
    kw = {"img_size": SIZE, "seed": 3, "extra_aug": JITTER, "preload": preload, "num_workers": 0}
    one = face_dls(halves_root, bs=4, **kw)
    ranks = [face_dls(halves_root, bs=2, **kw) for _ in range(2)]
    for r, d in enumerate(ranks):
        d.train.shard(r, 2)
    for epoch, start in ((0, 0), (1, 0), (1, 1)):
        ref = _epoch(one, epoch, start)
        parts = [_epoch(d, epoch, start) for d in ranks]
        assert len(ref) >= 2 and all(len(p) == len(ref) for p in parts)
        for k, batch in enumerate(ref):
            assert _rows([batch]) == _rows([parts[0][k], parts[1][k]]), (epoch, start, k)
        assert len(ranks[0].train) == len(ranks[1].train) == len(one.train)
    # the two ranks never share an item within an epoch
    a, b = (_rows(_epoch(d, 0)) for d in ranks)
    assert not set(a) & set(b)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        ranks[0].train.shard(2, 2)


@pytest.mark.parametrize("preload", ["off", "on"])
def test_a_loaders_copy_keeps_its_shard(halves_root, preload):
    d = face_dls(halves_root, img_size=SIZE, bs=2, seed=3, preload=preload, num_workers=0)
    d.train.shard(1, 2)
    copy = d.train.new()
    assert (copy.rank, copy.world_size) == (1, 2) and len(copy) == len(d.train)


# -- fvloss's own transforms (AdaFace's augmentations), named like Albumentations' ------------
def test_zero_pad_crop_keeps_one_rectangle_in_place():
    import albumentations as A

    from fvloss.data.transforms import ZeroPadCrop

    img = np.random.default_rng(0).integers(1, 256, (112, 112, 3), dtype=np.uint8)
    for seed in range(20):
        out = A.Compose([ZeroPadCrop(scale=(0.2, 1.0), p=1.0)], seed=seed)(image=img)["image"]
        kept = (out != 0).any(2)
        rows, cols = np.where(kept.any(1))[0], np.where(kept.any(0))[0]
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert kept[box].all() and kept.sum() == kept[box].size  # one rectangle, the rest 0
        assert np.array_equal(out[box], img[box])  # in place, unscaled
        assert 0.2 * 112 * 112 * 0.95 <= kept.sum() <= 112 * 112


def test_low_resolution_keeps_the_size_and_loses_detail():
    import albumentations as A

    from fvloss.data.transforms import LowResolution

    img = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    outs = [
        A.Compose([LowResolution(side=(0.2, 0.3), p=1.0)], seed=s)(image=img)["image"]
        for s in range(3)
    ]
    assert all(o.shape == img.shape for o in outs)
    assert all(
        np.abs(o.astype(int) - img).mean() > 20 for o in outs
    )  # noise is not kept at 1/4 size
    again = A.Compose([LowResolution(side=(0.2, 0.3), p=1.0)], seed=0)(image=img)["image"]
    assert np.array_equal(again, outs[0])  # seeded


def test_fvloss_transforms_are_found_by_name_and_typos_are_errors():
    from fvloss.data.transforms import train_pipeline

    p = train_pipeline(32, 0.5, 0.5, 0.5, [{"transform": "ZeroPadCrop", "p": 0.2}])
    assert "ZeroPadCrop" in repr(p)
    with pytest.raises(
        ValueError, match=r"unknown albumentations transform 'ZeroPadCorp'.*ZeroPadCrop"
    ):
        train_pipeline(32, 0.5, 0.5, 0.5, [{"transform": "ZeroPadCorp"}])
