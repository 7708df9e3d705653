"""RecordIO (insightface / MXNet ``.rec`` + ``.idx``) without mxnet: framing, index, headers,
layouts, bad files, ``fvloss pack`` and training from a ``.rec`` as from a folder."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fvloss.cli import pack
from fvloss.data import recordio as R
from fvloss.imageio import ImageReadError, read_rgb

REPO = Path(__file__).resolve().parents[2]
MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a, little endian


def frame(payload: bytes, cflag: int = 0) -> bytes:
    """One part written by hand from the format description (not with the module's writer)."""
    return (
        MAGIC
        + struct.pack("<I", cflag << 29 | len(payload))
        + payload
        + b"\0" * (-len(payload) % 4)
    )


def png(value: int, size: int = 8) -> bytes:
    return cv2.imencode(".png", np.full((size, size, 3), value, np.uint8))[1].tobytes()


def write_set(folder: Path, records: dict[int, bytes], name: str = "train") -> Path:
    """Write framed ``records`` (key -> already framed bytes) and their .idx by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    blob, idx = b"", ""
    for key, framed in records.items():
        idx += f"{key}\t{len(blob)}\n"
        blob += framed
    (folder / f"{name}.rec").write_bytes(blob)
    (folder / f"{name}.idx").write_text(idx)
    return folder / f"{name}.rec"


def image_record(label, image: bytes, key: int = 0) -> bytes:
    """An image record's payload by hand: ``<IfQQ`` (+ float32 labels) + image."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, label, key, 0) + image
    return (
        struct.pack("<IfQQ", len(label), 0, key, 0) + struct.pack(f"<{len(label)}f", *label) + image
    )


# -- framing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(10))
def test_framing_lengths_and_padding(n, tmp_path):
    data = bytes(range(1, n + 1))
    enc = R.encode_record(data)
    assert enc == frame(data)
    assert len(enc) % 4 == 0 and len(enc) == 8 + n + (-n % 4)
    p = tmp_path / "x.rec"
    p.write_bytes(enc + R.encode_record(b"next"))
    assert [d for _, d in R.iter_records(p)] == [data, b"next"]


def test_split_at_the_magic_word_matches_a_hand_written_frame():
    # aligned magic at 4 -> two parts, the word dropped; the last part padded
    data = b"\x01\x02\x03\x04" + MAGIC + b"\x05"
    expected = (
        MAGIC + struct.pack("<I", (1 << 29) | 4) + b"\x01\x02\x03\x04"
        + MAGIC + struct.pack("<I", (3 << 29) | 1) + b"\x05\0\0\0"
    )  # fmt: skip
    assert R.encode_record(data) == expected
    # three parts: first (1), middle (2), last (3); a middle part of length 0 between two words
    data = b"ab\0\0" + MAGIC + MAGIC + b"xyz"
    assert R.encode_record(data) == frame(b"ab\0\0", 1) + frame(b"", 2) + frame(b"xyz", 3)


@pytest.mark.parametrize(
    "data",
    [
        MAGIC,
        MAGIC + MAGIC,
        b"abcd" + MAGIC,
        MAGIC + b"abcdefg",
        b"a" + MAGIC + b"bcd",  # unaligned: not split
        b"abc" + MAGIC + b"d" + MAGIC[:2],
        b"ab" + MAGIC + b"cd" + MAGIC + MAGIC + b"x",  # unaligned, then aligned at 8 and 12
        bytes(range(256)) * 3 + MAGIC * 3 + b"\0" * 5,
    ],
)
def test_records_with_the_magic_word_round_trip(data, tmp_path):
    aligned = sum(data[i : i + 4] == MAGIC for i in range(0, len(data) - 3, 4))
    enc = R.encode_record(data)
    assert enc.count(MAGIC) >= aligned + 1  # one frame per aligned word, plus the first
    p = tmp_path / "x.rec"
    p.write_bytes(R.encode_record(b"first") + enc + R.encode_record(data[::-1]))
    got = [d for _, d in R.iter_records(p)]
    assert got == [b"first", data, data[::-1]]


def test_reader_refuses_parts_out_of_sequence(tmp_path):
    p = write_set(tmp_path, {0: frame(b"abcd", 3)})
    with pytest.raises(R.RecordIOError, match="continuation flag 3 out of sequence"):
        R.IndexedRecordReader(p).read(0)


# -- header -------------------------------------------------------------------------------------
def test_header_flag_zero_and_label_array():
    h = R.pack_header(R.IRHeader(0, 3.0, 7, 9))
    assert h == struct.pack("<IfQQ", 0, 3.0, 7, 9) and len(h) == 24
    header, img = R.unpack_image(h + b"IMG")
    assert header == R.IRHeader(0, 3.0, 7, 9) and img == b"IMG"

    h = R.pack_header(R.IRHeader(0, np.array([1.5, 2.0]), 7, 0))  # an array sets flag
    assert h == struct.pack("<IfQQ", 2, 0.0, 7, 0) + struct.pack("<2f", 1.5, 2.0)
    header, img = R.unpack_image(h + b"IMG")
    assert header.flag == 2 and header.label.dtype == np.float32
    assert header.label.tolist() == [1.5, 2.0] and (header.id, header.id2) == (7, 0)
    assert img == b"IMG"
    assert R.pack_image(R.IRHeader(0, 1.0, 0, 0), b"x") == R.pack_header(R.IRHeader(0, 1.0, 0, 0)) + b"x"  # fmt: skip


def test_short_header_is_an_error():
    with pytest.raises(R.RecordIOError, match="shorter than the 24-byte image header"):
        R.unpack_header(b"\0" * 10, "f.rec, key 3")
    with pytest.raises(R.RecordIOError, match="5 labels"):
        R.unpack_header(struct.pack("<IfQQ", 5, 0, 0, 0) + b"\0" * 8)


# -- layouts ------------------------------------------------------------------------------------
def test_insightface_layout_built_by_hand(tmp_path):
    imgs = [png(10), png(20), png(30)]
    records = {
        0: frame(struct.pack("<IfQQ", 2, 0, 0, 0) + struct.pack("<2f", 4, 6)),  # images 1..3
        1: frame(image_record(0.0, imgs[0], 1)),
        2: frame(image_record(0.0, imgs[1], 2)),
        3: frame(image_record([1.0, 0.5], imgs[2], 3)),  # a label array: its first is the identity
        4: frame(struct.pack("<IfQQ", 2, 0, 4, 0) + struct.pack("<2f", 1, 3)),  # identity 0
        5: frame(struct.pack("<IfQQ", 2, 0, 5, 0) + struct.pack("<2f", 3, 4)),  # identity 1
    }
    write_set(tmp_path / "ms1m", records)
    (tmp_path / "ms1m" / "property").write_text("2,8,8\n")
    keys, labels, report = R.scan_record_set(tmp_path / "ms1m", check="full")
    assert keys == [1, 2, 3] and labels == ["0", "0", "1"]
    assert (report.n_images, report.n_identities) == (3, 2)
    assert report.single_image_identities == ["1"] and not report.bad_files
    reader = R.RecordImageReader(tmp_path / "ms1m" / "train.rec")
    assert (reader(3) == 30).all() and reader(3).shape == (8, 8, 3)


def test_im2rec_layout_built_by_hand(tmp_path):
    # no header record: every key is an image, key 0 included (here with a 2-label array)
    records = {
        0: frame(image_record([5.0, 1.0], png(1))),
        7: frame(image_record(5.0, png(2), 7)),
        3: frame(image_record(2.0, png(3), 3)),
    }
    rec = write_set(tmp_path, records, "faces")
    keys, labels, report = R.scan_record_set(rec)
    assert keys == [0, 3, 7] and labels == ["5", "2", "5"]
    assert report.n_identities == 2


def test_identities_txt_names_the_labels(tmp_path):
    rec = write_set(tmp_path, {1: frame(image_record(1.0, png(1))), 2: frame(image_record(0.0, png(2)))})  # fmt: skip
    (tmp_path / "identities.txt").write_text("alice\nbob\n")
    assert R.scan_record_set(rec)[1] == ["bob", "alice"]
    (tmp_path / "identities.txt").write_text("alice\n")
    with pytest.raises(R.RecordIOError, match=r"key 1: label 1, but .*identities.txt names only 1"):
        R.scan_record_set(rec)


# -- index --------------------------------------------------------------------------------------
def test_idx_random_access(tmp_path):
    rng = np.random.default_rng(0)
    data = {k: rng.bytes(int(rng.integers(0, 40))) + MAGIC * int(k % 3 == 0) for k in range(40)}
    keys = rng.permutation(40).tolist()
    with R.IndexedRecordWriter(tmp_path / "a.rec", tmp_path / "a.idx") as w:
        for k in keys:
            w.write_key(k, data[k])
    lines = (tmp_path / "a.idx").read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == keys
    r = R.IndexedRecordReader(tmp_path / "a.rec")
    assert len(r) == 40 and r.keys == keys and 17 in r and 40 not in r
    for k in rng.permutation(40):
        assert r.read(int(k)) == data[k]
    with pytest.raises(R.RecordIOError, match="key 99: key not in a.idx"):
        r.read(99)
    r.close()


def test_reader_pickles_without_its_handle(tmp_path):
    rec = write_set(tmp_path, {0: frame(b"zero"), 1: frame(b"one!")})
    r = R.IndexedRecordReader(rec)
    assert r.read(1) == b"one!" and r._file is not None
    s = pickle.dumps(r)
    r2 = pickle.loads(s)
    assert r2._file is None and r2.read(0) == b"zero"
    img = R.RecordImageReader(write_set(tmp_path / "img", {5: frame(image_record(0.0, png(7)))}))
    img(5)
    assert (pickle.loads(pickle.dumps(img))(5) == 7).all()


class _PidDataset(torch.utils.data.Dataset):
    def __init__(self, reader: R.IndexedRecordReader):
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int):
        data = self.reader.read(i)
        return torch.tensor(list(data)), os.getpid(), self.reader._pid, self.reader._file.fileno()


def test_each_dataloader_worker_opens_its_own_handle(tmp_path):
    rec = write_set(tmp_path, {i: frame(bytes([i]) * 4) for i in range(4)})
    reader = R.IndexedRecordReader(rec)
    reader.read(0)  # the parent opens its handle first: the fork inherits it
    parent_fd = reader._file.fileno()
    dl = torch.utils.data.DataLoader(_PidDataset(reader), batch_size=2, num_workers=1)
    batches = list(dl)
    for _data, pid, reader_pid, _fd in batches:
        assert (pid != os.getpid()).all() and (pid == reader_pid).all()
    assert [b[0][:, 0].tolist() for b in batches] == [[0, 1], [2, 3]]
    assert reader._pid == os.getpid() and reader._file.fileno() == parent_fd


# -- bad input ----------------------------------------------------------------------------------
@pytest.fixture()
def good_set(tmp_path) -> Path:
    records = {k: frame(image_record(float(k % 2), png(k), k)) for k in range(6)}
    return write_set(tmp_path / "set", records)


def test_missing_idx_names_it(good_set):
    good_set.with_suffix(".idx").unlink()
    with pytest.raises(FileNotFoundError, match=r"set/train.idx: index file not found"):
        R.scan_record_set(good_set.parent)
    with pytest.raises(FileNotFoundError, match="train.idx"):
        R.IndexedRecordReader(good_set)


def test_malformed_idx_identities_and_property_name_the_file(good_set):
    idx = good_set.with_suffix(".idx")
    idx.write_text(idx.read_text() + "7 nonsense\n")
    with pytest.raises(R.RecordIOError, match=r"train.idx, line 7: expected 'key<TAB>offset'"):
        R.scan_record_set(good_set)
    idx.write_text(idx.read_text().replace("7 nonsense\n", ""))
    (good_set.parent / "property").write_text("2;8;8")
    with pytest.raises(R.RecordIOError, match=r"property: expected 'num_classes,height,width'"):
        R.scan_record_set(good_set)
    (good_set.parent / "property").unlink()
    (good_set.parent / "identities.txt").write_text("a\na\n")
    with pytest.raises(R.RecordIOError, match=r"identities.txt: .*unique"):
        R.scan_record_set(good_set)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("85742,112,112\n", (85742, 112, 112, None)),  # the MS1M / Glint releases: one line
        ("40,112,112\n800\n", (40, 112, 112, 800)),  # insightface's rec_builder: + the count
        ("40,112,112\r\n800", (40, 112, 112, 800)),
    ],
)
def test_property_in_both_layouts(tmp_path, text, expected):
    (tmp_path / "property").write_text(text)
    prop = R.read_property(tmp_path / "property")
    assert prop == expected and prop.num_classes == expected[0]


@pytest.mark.parametrize("text", ["40,112\n", "40,112,112\n800\n3\n", "40,112,112\nmany\n", ""])
def test_malformed_property_names_the_file(tmp_path, text):
    (tmp_path / "property").write_text(text)
    with pytest.raises(R.RecordIOError, match=r"property: expected 'num_classes,height,width'"):
        R.read_property(tmp_path / "property")


def test_rec_builder_layout_trains_and_its_count_is_checked(good_set):
    # insightface's rec_builder: images at keys 0..n-1 (no header record), property in 2 lines
    prop = good_set.parent / "property"
    prop.write_text("2,8,8\n6\n")
    keys, labels, report = R.scan_record_set(good_set.parent)
    assert keys == list(range(6)) and report.n_identities == 2
    prop.write_text("2,8,8\n7\n")  # a set cut short, or another set's property
    with pytest.raises(R.RecordIOError, match=r"property: says 7 images, but train.idx indexes 6"):
        R.scan_record_set(good_set.parent)


def _corrupt_idx(rec: Path, key: int, new_offset: int) -> None:
    idx = rec.with_suffix(".idx")
    lines = [
        f"{key}\t{new_offset}" if line.split("\t")[0] == str(key) else line
        for line in idx.read_text().splitlines()
    ]
    idx.write_text("\n".join(lines) + "\n")


def test_wrong_magic_names_file_and_key(good_set):
    offsets = R.read_index(good_set.with_suffix(".idx"))
    _corrupt_idx(good_set, 3, offsets[3] + 4)
    with pytest.raises(R.RecordIOError, match=r"train.rec, key 3: no record at offset \d+ \(magic"):
        R.scan_record_set(good_set)
    keys, _, report = R.scan_record_set(good_set, skip_bad=True)
    assert keys == [0, 1, 2, 4, 5] and len(report.bad_files) == 1
    assert report.bad_files[0][0].endswith("train.rec, key 3") and "magic" in report.bad_files[0][1]


def test_truncated_file_and_idx_past_the_end(good_set):
    size = good_set.stat().st_size
    good_set.write_bytes(good_set.read_bytes()[: size - 10])  # the last record cut short
    with pytest.raises(R.RecordIOError, match=r"train.rec, key 5: .*truncated file"):
        R.scan_record_set(good_set)
    _corrupt_idx(good_set, 2, 10**6)
    with pytest.raises(R.RecordIOError, match=r"key 2: offset 1000000 is past the end of the file"):
        R.IndexedRecordReader(good_set).read(2)
    keys, _, report = R.scan_record_set(good_set, skip_bad=True)
    assert keys == [0, 1, 3, 4] and [b[0][-5:] for b in report.bad_files] == ["key 2", "key 5"]
    assert "skipped" in report.summary()


def test_undecodable_images_name_file_and_key(tmp_path):
    jpeg_garbage = b"\xff\xd8\xff\xe0" + b"garbage" * 10 + b"\xff\xd9"  # passes the quick check
    records = {
        1: frame(image_record(0.0, png(1))),
        2: frame(image_record(0.0, b"not an image at all")),
        3: frame(image_record(1.0, jpeg_garbage)),
        4: frame(image_record(1.0, png(4))),
        5: frame(image_record(1.0, png(5)[:-20])),  # a PNG without its IEND chunk
    }
    rec = write_set(tmp_path, records)
    with pytest.raises(ImageReadError, match=r"train.rec, key 2: not an image"):
        R.scan_record_set(rec)
    keys, _, report = R.scan_record_set(rec, check="quick", skip_bad=True)
    assert keys == [1, 3, 4] and [b[1] for b in report.bad_files] == [
        "not an image (unknown file signature)",
        "truncated PNG (no IEND chunk)",
    ]
    keys, _, report = R.scan_record_set(rec, check="full", skip_bad=True)
    assert keys == [1, 4] and report.bad_files[1] == (f"{rec}, key 3", "not a decodable image")
    with pytest.raises(ImageReadError, match=r"train.rec, key 3: not a decodable image"):
        R.RecordImageReader(rec)(3)  # at training time too, not only in the scan


def test_face_dls_skip_bad_on_a_rec(tmp_path):
    from fvloss.data import face_dls

    records = {k: frame(image_record(float(k % 5), png(10 * k, 16), k)) for k in range(20)}
    records[7] = frame(image_record(2.0, b"\xff\xd8 cut jpeg"))
    rec = write_set(tmp_path, records)
    with pytest.raises(ImageReadError, match="key 7"):
        face_dls(rec, img_size=16, bs=4, num_workers=0)
    dls = face_dls(rec, img_size=16, bs=4, num_workers=0, skip_bad=True)
    assert dls.report.n_images == 19 and dls.report.bad_files[0][0].endswith("key 7")


# -- fvloss pack and training from the .rec ----------------------------------------------------
@pytest.fixture(scope="module")
def packed(tiny_synthetic, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed")
    assert pack.main([str(tiny_synthetic), str(out)]) == 0
    return out


def test_pack_writes_insightface_layout(packed, tiny_synthetic):
    assert sorted(p.name for p in packed.iterdir()) == ["identities.txt", "property", "train.idx", "train.rec"]  # fmt: skip
    names = sorted(p.name for p in tiny_synthetic.iterdir() if p.is_dir())
    assert (packed / "identities.txt").read_text().splitlines() == names
    assert R.read_property(packed / "property") == (6, 32, 32, 24)  # rec_builder's 2 lines
    r = R.IndexedRecordReader(packed / "train.rec")
    h0, rest = R.unpack_image(r.read(0))
    assert h0.flag == 2 and h0.label.tolist() == [25, 31] and rest == b""
    assert len(r) == 31  # header + 24 images + 6 identity records
    for i, name in enumerate(names):
        h, rest = R.unpack_image(r.read(25 + i))
        start, end = (int(v) for v in h.label)
        assert end - start == 4 and rest == b""
        files = sorted((tiny_synthetic / name).iterdir())
        for key, f in zip(range(start, end), files):
            h, img = R.unpack_image(r.read(key))
            assert h.label == i and img == f.read_bytes()  # the original bytes
    reader = R.RecordImageReader(packed / "train.rec")
    assert np.array_equal(reader(1), read_rgb(sorted((tiny_synthetic / names[0]).iterdir())[0]))


def test_face_dls_on_the_rec_matches_the_folder(packed, tiny_synthetic):
    from fvloss.data import face_dls

    a = face_dls(tiny_synthetic, img_size=32, bs=8, num_workers=0, preload="off")
    for root in (packed / "train.rec", packed):
        b = face_dls(root, img_size=32, bs=8, num_workers=0, check="full", preload="off")
        assert (b.train_identities, b.valid_identities) == (a.train_identities, a.valid_identities)
        assert b.n_classes == a.n_classes and list(b.vocab) == list(a.vocab)
        assert b.report.n_images == a.report.n_images == 24
        for split in ("train_ds", "valid_ds"):
            counts = [Counter(int(y) for _, y in getattr(d, split)) for d in (a, b)]
            assert counts[0] == counts[1]
    xa, ya = a.one_batch()
    xb, yb = b.one_batch()
    assert (xb.shape, xb.dtype, type(xb)) == (xa.shape, xa.dtype, type(xa))
    assert (yb.shape, yb.dtype) == (ya.shape, ya.dtype)
    # the decoded images are pixel for pixel the folder's, in the same order
    for i in range(len(a.valid_ds)):
        assert np.array_equal(a.valid_ds[i][0], b.valid_ds[i][0])
    assert torch.equal(a.valid.one_batch()[0], b.valid.one_batch()[0])  # eval pipeline, no flips
    # decoded once into memory (preload): the same images from the .rec as from the folder
    pa, pb = (
        face_dls(r, img_size=32, bs=8, num_workers=0, preload="on")
        for r in (tiny_synthetic, packed)
    )
    assert torch.equal(pa.train.images, pb.train.images) and torch.equal(
        pa.valid.images, pb.valid.images
    )
    # and the same as the per-image eval pipeline's (one Resize, one normalisation)
    torch.testing.assert_close(pa.valid.one_batch()[0], a.valid.one_batch()[0], atol=1e-6, rtol=0)


def test_face_dls_with_one_worker_over_the_rec(packed):
    from fvloss.data import face_dls

    dls = face_dls(packed, img_size=32, bs=8, num_workers=1, check="none")
    xb, yb = next(iter(dls.train))
    assert xb.shape == (8, 3, 32, 32) and yb.max() < dls.n_classes


def test_pack_reencode_and_bad_input(tiny_synthetic, tmp_path, capsys):
    assert (
        pack.main([str(tiny_synthetic), str(tmp_path / "q"), "--reencode", "--quality", "90"]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "24 images of 6 identities" in out and "JPEG q90" in out
    keys, labels, _ = R.scan_record_set(tmp_path / "q", check="full")
    assert len(keys) == 24 and labels[0] == sorted(p.name for p in tiny_synthetic.iterdir())[0]
    _, img = R.unpack_image(R.IndexedRecordReader(tmp_path / "q" / "train.rec").read(1))
    assert img[:2] == b"\xff\xd8"

    assert pack.main([str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err
    assert pack.main([str(tiny_synthetic), str(tmp_path / "o"), "--quality", "80"]) == 2
    assert "--reencode" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_pack_leaves_the_old_set_and_no_partial_files(
    tiny_synthetic, tmp_path, monkeypatch
):
    out = tmp_path / "set"
    R.pack_folder(tiny_synthetic, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def dies(path, quality):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if killed half way
        return path.read_bytes()

    monkeypatch.setattr(R, "_encoded", dies)
    with pytest.raises(KeyboardInterrupt):
        R.pack_folder(tiny_synthetic, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_pack_is_on_the_cli():
    from fvloss.cli import COMMANDS

    assert COMMANDS["pack"][0] == "fvloss.cli.pack"


@pytest.mark.slow
def test_bench_quick_smoke(tiny_synthetic, tmp_path):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TMPDIR": str(tmp_path)}
    t = time.time()
    r = subprocess.run(
        [sys.executable, "bench/recordio_speed.py", "--quick", "--data", str(tiny_synthetic)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "| " in r.stdout and "s in all" in r.stdout
    assert time.time() - t < 60
