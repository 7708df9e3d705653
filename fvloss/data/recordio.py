"""MXNet / insightface RecordIO training sets (``train.rec`` + ``train.idx``), without mxnet.

The insightface training sets (MS1M, Glint360K, WebFace, ...) ship as one ``train.rec`` of
encoded images plus a ``train.idx`` text index. mxnet reads them, but it no longer installs
beside numpy >= 1.24, so this module reads and writes the format itself:

* **Framing** (dmlc-core ``recordio.cc``): each record is ``uint32 magic 0xced7230a``,
  ``uint32 lrec`` (upper 3 bits: continuation flag, lower 29: length), the data, zero padding to
  a multiple of 4. The writer splits a record wherever the magic word occurs at a 4-byte-aligned
  offset of its data and drops that word; the reader joins the parts and puts it back.
* **Index**: ``key\\toffset`` per line; :class:`IndexedRecordReader` reads any key at random and
  opens its own file handle in every process (one per DataLoader worker).
* **Image header** (mxnet ``IRHeader``): ``<IfQQ`` = flag, label, id, id2, then ``flag`` float32
  labels when flag > 0, then the encoded image.
* **Layouts**: insightface's (record 0 says which keys are images, identity records follow them)
  and im2rec's (every key an image); :func:`scan_record_set` reads both.

``fvloss pack FOLDER OUT_DIR`` (:func:`pack_folder`) writes an identity folder in insightface's layout.
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ..imageio import ImageReadError, check_image_bytes, decode_rgb, read_rgb
from .folder import scan_identities
from .index import DataReport, IdentityIndex

__all__ = [
    "MAGIC",
    "RecordSetIndex",
    "scan_records",
    "RecordIOError",
    "encode_record",
    "RecordWriter",
    "IndexedRecordWriter",
    "iter_records",
    "read_index",
    "write_index",
    "IndexedRecordReader",
    "IRHeader",
    "pack_header",
    "unpack_header",
    "pack_image",
    "unpack_image",
    "RecordSetPaths",
    "record_set_paths",
    "is_record_set",
    "RecordProperty",
    "read_property",
    "scan_record_set",
    "RecordImageReader",
    "PackResult",
    "pack_folder",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")  # magic, lrec
_LENGTH_BITS = 29
_MAX_PART = (1 << _LENGTH_BITS) - 1
HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
_NO_INDEX = (
    "index file not found (a .rec is read through its .idx: im2rec / fvloss pack write both)"
)


class RecordIOError(ValueError):
    """A record file, index or record is malformed; ``where`` (file and key or offset) and
    ``reason`` say which and why."""

    def __init__(self, where: str | Path, reason: str):
        self.where, self.reason = str(where), reason
        super().__init__(f"{where}: {reason}")


# -- framing ------------------------------------------------------------------------------------
def _padding(n: int) -> int:
    return -n % 4


def _split_at_magic(data: bytes) -> list[bytes]:
    """The parts dmlc's writer makes of ``data``: cut at every 4-byte-aligned magic word (the
    word itself dropped). ``bytes.find`` scans in C; unaligned hits are skipped, as dmlc only
    compares aligned words."""
    parts, start = [], 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        if pos % 4 == 0:
            parts.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    parts.append(data[start:])
    return parts


def encode_record(data: bytes) -> bytes:
    """``data`` framed exactly as dmlc-core's ``RecordIOWriter::WriteRecord`` writes it."""
    data = bytes(data)
    parts = _split_at_magic(data)
    out = bytearray()
    for i, part in enumerate(parts):
        if len(part) > _MAX_PART:
            raise ValueError(f"a RecordIO record part holds at most {_MAX_PART} bytes")
        if len(parts) == 1:
            cflag = 0  # whole record
        else:
            cflag = 1 if i == 0 else 3 if i == len(parts) - 1 else 2  # first / last / middle
        out += _FRAME.pack(MAGIC, (cflag << _LENGTH_BITS) | len(part)) + part
    # only the last part can be unaligned (the others end at an aligned magic word), and dmlc
    # pads after it by the whole record's length: the same number of zero bytes
    out += b"\0" * _padding(len(data))
    return bytes(out)


def _read_record(
    pread: Callable[[int, int], bytes], offset: int, size: int, where: str
) -> tuple[bytes, int]:
    """Read the (possibly multi-part) record at ``offset`` of a file of ``size`` bytes through
    ``pread(offset, n)``; return its data and the offset of the next record. Every way a file
    can be cut or misindexed raises :class:`RecordIOError` naming ``where``."""
    parts: list[bytes] = []
    while True:
        if offset + _FRAME.size > size:
            at = "past the end of" if offset >= size else "in the last bytes of"
            reason = f"offset {offset} is {at} the file (size {size}): truncated file or wrong .idx"
            raise RecordIOError(where, reason)
        magic, lrec = _FRAME.unpack(pread(offset, _FRAME.size))
        if magic != MAGIC:
            raise RecordIOError(
                where,
                f"no record at offset {offset} (magic 0x{magic:08x}, expected 0x{MAGIC:08x}): "
                "corrupt file, or an .idx that belongs to another .rec",
            )
        cflag, length = lrec >> _LENGTH_BITS, lrec & _MAX_PART
        # whole (0) or first (1) part to begin with, then middle (2) parts up to a last (3) one
        if cflag > 3 or (cflag in (0, 1)) != (not parts):
            reason = f"continuation flag {cflag} out of sequence at offset {offset}: corrupt file"
            raise RecordIOError(where, reason)
        start = offset + _FRAME.size
        if start + length > size:
            raise RecordIOError(
                where,
                f"record at offset {offset} says {length} bytes, but the file ends "
                f"{size - start} bytes later: truncated file",
            )
        parts.append(pread(start, length))
        offset = start + length + _padding(length)
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(parts), offset


class RecordWriter:
    """Append records to a new ``.rec`` file; :meth:`write` returns each record's offset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = open(self.path, "wb")  # closed by close() or the with block

    def write(self, data: bytes) -> int:
        offset = self._f.tell()
        self._f.write(encode_record(data))
        return offset

    def close(self, sync: bool = False) -> None:
        """Close; with ``sync``, first make the bytes durable (before an atomic rename)."""
        if self._f.closed:
            return
        if sync:
            self._f.flush()
            os.fsync(self._f.fileno())
        self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IndexedRecordWriter(RecordWriter):
    """A :class:`RecordWriter` that also writes the ``.idx`` (``key\\toffset``) on close."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        super().__init__(rec_path)
        self.idx_path = Path(idx_path)
        self.offsets: dict[int, int] = {}

    def write_key(self, key: int, data: bytes) -> int:
        if key in self.offsets:
            raise ValueError(f"{self.path}: key {key} written twice")
        self.offsets[key] = self.write(data)
        return self.offsets[key]

    def close(self, sync: bool = False) -> None:
        if self._f.closed:
            return
        super().close(sync)
        write_index(self.idx_path, self.offsets.items(), sync=sync)


def iter_records(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` of every record of a ``.rec`` in file order, without an index."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        pread = _preader(f)
        offset = 0
        while offset < size:
            data, nxt = _read_record(pread, offset, size, f"{path}, offset {offset}")
            yield offset, data
            offset = nxt


def _preader(f) -> Callable[[int, int], bytes]:
    """``pread(offset, n)`` on an open binary file: ``os.pread`` (no shared file position)
    where the OS has it, else seek + read."""
    if hasattr(os, "pread"):
        fd = f.fileno()
        return lambda offset, n: os.pread(fd, n, offset)

    def pread(offset: int, n: int) -> bytes:
        f.seek(offset)
        return f.read(n)

    return pread


# -- index --------------------------------------------------------------------------------------
def read_index(path: str | Path) -> dict[int, int]:
    """``{key: offset}`` from a ``.idx`` file (``key\\toffset`` per line), in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {_NO_INDEX}")
    offsets: dict[int, int] = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                key, offset = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                reason = f"expected 'key<TAB>offset', got {line.strip()[:60]!r}"
                raise RecordIOError(f"{path}, line {n}", reason) from None
            if offset < 0:
                raise RecordIOError(f"{path}, line {n}", f"negative offset {offset}")
            offsets[key] = offset
    return offsets


def write_index(path: str | Path, items: Iterable[tuple[int, int]], sync: bool = False) -> None:
    """Write ``(key, offset)`` pairs as a ``.idx`` file."""
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(f"{key}\t{offset}\n" for key, offset in items)
        if sync:
            f.flush()
            os.fsync(f.fileno())


class IndexedRecordReader:
    """Random access to the records of a ``.rec`` by key, through its ``.idx``.

    The file is opened on the first :meth:`read` and again in any other process: a DataLoader
    worker forked from the parent gets its own handle instead of sharing the parent's. Pickling
    drops the handle (the unpickled copy opens its own).
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.path.with_suffix(".idx")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: record file not found")
        self.offsets = read_index(self.idx_path)
        self.size = self.path.stat().st_size
        self._file = None
        self._pid: int | None = None
        self._pread: Callable[[int, int], bytes] | None = None

    @property
    def keys(self) -> list[int]:
        """The keys in ``.idx`` order."""
        return list(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets)

    def __contains__(self, key: object) -> bool:
        return key in self.offsets

    def where(self, key: int) -> str:
        """How errors name a record: ``"path/train.rec, key 17"``."""
        return f"{self.path}, key {key}"

    def _reader(self) -> Callable[[int, int], bytes]:
        if self._pid != os.getpid():  # first use, or a forked child: open our own handle
            self._file = open(self.path, "rb", buffering=0)
            self._pid, self._pread = os.getpid(), _preader(self._file)
        return self._pread

    def read(self, key: int) -> bytes:
        """The data of record ``key`` (multi-part records joined)."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise RecordIOError(self.where(key), f"key not in {self.idx_path.name}") from None
        return _read_record(self._reader(), offset, self.size, self.where(key))[0]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = self._pread = None

    def __enter__(self) -> IndexedRecordReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _pread=None)  # handles do not travel
        return state


# -- image header -------------------------------------------------------------------------------
class IRHeader(NamedTuple):
    """mxnet's image record header: ``label`` is a float when ``flag`` is 0, else an array of
    ``flag`` float32 labels."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_header(header: IRHeader) -> bytes:
    """24 header bytes, plus the float32 labels when ``label`` is an array (then ``flag`` is
    set to their number, as mxnet's ``recordio.pack`` does)."""
    if np.ndim(header.label) == 0 and not header.flag:
        return HEADER.pack(0, float(header.label), header.id, header.id2)
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    return HEADER.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes()


def unpack_header(record: bytes, where: str = "<record>") -> tuple[IRHeader, int]:
    """The header of ``record`` and the offset where its payload (the image) starts."""
    if len(record) < HEADER.size:
        reason = (
            f"record of {len(record)} bytes is shorter than the {HEADER.size}-byte image header"
        )
        raise RecordIOError(where, reason)
    flag, label, id_, id2 = HEADER.unpack_from(record)
    start = HEADER.size + 4 * flag
    if flag == 0:
        return IRHeader(0, label, id_, id2), start
    if start > len(record):
        reason = f"header says {flag} labels, but the record has only {len(record)} bytes"
        raise RecordIOError(where, reason)
    labels = np.frombuffer(record, "<f4", flag, HEADER.size).astype(np.float32)
    return IRHeader(flag, labels, id_, id2), start


def pack_image(header: IRHeader, image: bytes) -> bytes:
    """One image record: header (+ labels) + encoded image bytes (mxnet's ``recordio.pack``)."""
    return pack_header(header) + bytes(image)


def unpack_image(record: bytes, where: str = "<record>") -> tuple[IRHeader, bytes]:
    """``(header, encoded image bytes)`` of an image record (mxnet's ``recordio.unpack``)."""
    header, start = unpack_header(record, where)
    return header, record[start:]


# -- record sets --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordSetPaths:
    """The files of one record set; ``property`` and ``identities`` are ``None`` when absent."""

    rec: Path
    idx: Path
    property: Path | None
    identities: Path | None


def is_record_set(path: str | Path) -> bool:
    """Whether ``path`` names a record set: a ``.rec`` file or a folder holding ``train.rec``."""
    path = Path(path)
    if path.is_dir():
        return (path / "train.rec").is_file()
    return path.suffix == ".rec"  # a missing one too: the scan then says it is missing


def record_set_paths(path: str | Path) -> RecordSetPaths:
    """Resolve a ``.rec`` file or a folder with ``train.rec`` + ``train.idx`` (+ ``property``,
    ``identities.txt``) to its files; a missing ``.rec`` or ``.idx`` raises naming it."""
    path = Path(path)
    rec = path / "train.rec" if path.is_dir() else path
    if not rec.is_file():
        raise FileNotFoundError(f"{rec}: record file not found")
    idx = rec.with_suffix(".idx")
    if not idx.is_file():
        raise FileNotFoundError(f"{idx}: {_NO_INDEX}")
    prop, names = rec.parent / "property", rec.parent / "identities.txt"
    return RecordSetPaths(
        rec, idx, prop if prop.is_file() else None, names if names.is_file() else None
    )


class RecordProperty(NamedTuple):
    """insightface's ``property`` file: ``num_classes,height,width``, and on a second line the
    image count when insightface's ``rec_builder`` wrote it (``None`` when absent)."""

    num_classes: int
    height: int
    width: int
    n_images: int | None = None


def read_property(path: str | Path) -> RecordProperty:
    """Read a ``property`` file in either layout the field writes: one line ``C,H,W`` (the
    MS1M / Glint / CASIA releases, ``fvloss pack``) or two, ``C,H,W`` then the image count
    (insightface's ``python-package/insightface/data/rec_builder.py``)."""
    text = Path(path).read_text(errors="replace").strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        if not 1 <= len(lines) <= 2:
            raise ValueError
        c, h, w = (int(v) for v in lines[0].split(","))
        n = int(lines[1]) if len(lines) == 2 else None
    except ValueError:
        reason = (
            "expected 'num_classes,height,width' and optionally the image count on a second "
            f"line, got {text[:60]!r}"
        )
        raise RecordIOError(path, reason) from None
    return RecordProperty(c, h, w, n)


def _read_names(path: Path) -> list[str]:
    try:
        names = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RecordIOError(path, "not UTF-8 text (expected one identity name per line)") from None
    if any(not n for n in names) or len(set(names)) != len(names):
        raise RecordIOError(path, "identity names must be one per line, non-empty and unique")
    return names


def _image_keys(reader: IndexedRecordReader) -> tuple[str, list[int]]:
    """The layout (``"insightface"`` or ``"im2rec"``) and its image keys.

    insightface's record 0 is a header with no image and ``flag`` 2 whose label ``[a, b]`` says
    images are keys ``1..a-1`` (then identity records ``a..b-1``, unused here: labels come from
    the image headers, as insightface trains; like insightface, only ``a`` is relied on and any
    flag > 0 is accepted). An im2rec file has images at every key; its record 0, if any, is an
    image (a multi-label one has flag > 0 too, but also a payload).
    """
    if 0 not in reader:
        return "im2rec", sorted(reader.keys)
    try:
        record = reader.read(0)
        header, start = unpack_header(record, reader.where(0))
    except RecordIOError as e:
        reason = f"{e.reason} (record 0 tells the layout, so it cannot be skipped)"
        raise RecordIOError(e.where, reason) from None
    if header.flag > 0 and start == len(record):
        return "insightface", list(range(1, int(header.label[0])))
    return "im2rec", sorted(reader.keys)


def _record_label(header: IRHeader, where: str) -> int:
    """The identity number of an image record: its label, or the first of its labels."""
    value = float(header.label[0] if header.flag else header.label)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise RecordIOError(where, f"label {value} is not an identity number")
    return int(value)


def scan_record_set(
    path: str | Path, check: str = "quick", skip_bad: bool = False
) -> tuple[list[int], list[str], DataReport]:
    """The image keys of a record set, their identity names and a :class:`~fvloss.data.DataReport`.

    ``path`` is a ``.rec`` (its ``.idx`` beside it) or a folder with ``train.rec`` + ``train.idx``.
    Identity names are the labels as strings, or line ``label`` of ``identities.txt`` beside the
    ``.rec`` when present (what ``fvloss pack`` writes). Every record is read (its header holds
    the label); ``check="quick"`` also checks each image's signature and end marker, ``"full"``
    decodes it. A bad record raises naming the file and key, or with ``skip_bad`` is skipped
    and listed in ``report.bad_files``.
    """
    if check not in ("quick", "full", "none"):
        raise ValueError(f"check must be 'quick', 'full' or 'none', got {check!r}")
    paths = record_set_paths(path)
    names = _read_names(paths.identities) if paths.identities else None
    report = DataReport(root=str(paths.rec))
    keys: list[int] = []
    labels: list[str] = []
    with IndexedRecordReader(paths.rec, paths.idx) as reader:
        _, image_keys = _image_keys(reader)
        if paths.property:  # a malformed one is an error; a stated image count is checked
            _check_count(read_property(paths.property), len(image_keys), paths)
        for key in image_keys:
            where = reader.where(key)
            try:
                label = _record_label_checked(reader, key, check)
                name = str(label) if names is None else _name_of(label, names, paths, where)
            except (RecordIOError, ImageReadError) as e:
                if not skip_bad:
                    hint = " (pass skip_bad=True / --skip-bad to skip and report such records)"
                    raise type(e)(where, e.reason + hint) from None
                report.bad_files.append((where, e.reason))
                continue
            keys.append(key)
            labels.append(name)
    if not keys:
        raise ValueError(f"{paths.rec}: no usable image records")
    counts = Counter(labels)
    report.single_image_identities = sorted(n for n, c in counts.items() if c == 1)
    report.n_images, report.n_identities = len(keys), len(counts)
    return keys, labels, report


def _check_count(prop: RecordProperty, n_index: int, paths: RecordSetPaths) -> None:
    """The image count ``property`` states (when it does) against the index: they differ
    when the ``.idx`` or the ``.rec`` was cut short or belongs to another set."""
    if prop.n_images is not None and prop.n_images != n_index:
        raise RecordIOError(
            paths.property,
            f"says {prop.n_images} images, but {paths.idx.name} indexes {n_index} image "
            "records (a truncated or mismatched .rec / .idx?)",
        )


@dataclass
class RecordSetIndex(IdentityIndex):
    """An :class:`IdentityIndex` of a RecordIO set: ``items`` are record keys of ``rec``."""

    rec: Path = Path()
    idx: Path = Path()


def scan_records(path: str | Path, check: str = "quick", skip_bad: bool = False) -> RecordSetIndex:
    """:func:`~.folder.scan_identities` for a ``.rec`` (or a folder with ``train.rec`` + ``train.idx``):
    see :func:`scan_record_set`."""
    paths = record_set_paths(path)
    keys, labels, report = scan_record_set(paths.rec, check=check, skip_bad=skip_bad)
    return RecordSetIndex(keys, labels, report, paths.rec, paths.idx)


def _record_label_checked(reader: IndexedRecordReader, key: int, check: str) -> int:
    """Read record ``key``, check it as ``check`` asks, return its identity number."""
    where = reader.where(key)
    header, image = unpack_image(reader.read(key), where)
    label = _record_label(header, where)
    if check == "quick":
        reason = check_image_bytes(image)
        if reason:
            raise ImageReadError(where, reason)
    elif check == "full":
        decode_rgb(image, where)
    return label


def _name_of(label: int, names: list[str], paths: RecordSetPaths, where: str) -> str:
    if label >= len(names):
        reason = f"label {label}, but {paths.identities} names only {len(names)} identities"
        raise RecordIOError(where, reason)
    return names[label]


class RecordImageReader:
    """``key -> HxWx3 uint8 RGB`` from a ``.rec``: the record-set counterpart of
    :func:`~fvloss.imageio.read_rgb` (a fastai ``type_tfms`` reader). Each process opens its
    own handle (see :class:`IndexedRecordReader`); errors name the file and key."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None):
        self.reader = IndexedRecordReader(rec_path, idx_path)

    def __call__(self, key: int) -> np.ndarray:
        where = self.reader.where(key)
        _, image = unpack_image(self.reader.read(key), where)
        return decode_rgb(image, where)


# -- fvloss pack --------------------------------------------------------------------------------
@dataclass
class PackResult:
    rec: Path
    n_images: int
    n_identities: int
    n_bytes: int
    height: int
    width: int


def _encoded(path: Path, quality: int | None) -> bytes:
    """A file's bytes as stored: the original bytes, or (with ``quality``) re-encoded JPEG."""
    if quality is None:
        return path.read_bytes()
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(read_rgb(path), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ImageReadError(path, "could not be re-encoded as JPEG")
    return buf.tobytes()


def pack_folder(
    folder: str | Path, out_dir: str | Path, quality: int | None = None, check: str = "quick"
) -> PackResult:
    """Write ``folder/<identity>/<image>`` as ``out_dir/{train.rec, train.idx, property,
    identities.txt}`` in insightface's layout: key 0 the header, keys ``1..N`` the images
    (labels ``0..C-1`` in sorted identity order), keys ``N+1..N+C`` one identity record each
    with its image key range. Original bytes unless ``quality`` (then re-encoded JPEG).

    Atomic: everything is written under ``*.partial`` names and renamed at the end, the old
    ``train.idx`` removed first and the new one renamed last, so a killed pack leaves the old
    set, or a set without an ``.idx`` (which readers refuse by name), never a half file that
    looks whole.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    index = scan_identities(folder, check=check)
    identities = index.identities
    if len(identities) >= 1 << 24:  # labels are float32: exact integers only up to 2^24
        raise ValueError(f"{folder}: {len(identities)} identities are too many for float32 labels")
    number = {name: i for i, name in enumerate(identities)}
    # images grouped by identity (scan order within one), so each identity's keys are a range
    order = sorted(range(len(index.items)), key=lambda i: number[index.labels[i]])
    n, c = len(order), len(identities)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ("train.rec", "property", "identities.txt", "train.idx")  # the .idx renamed last
    final = {name: out_dir / name for name in names}
    temp = {name: p.with_name(p.name + ".partial") for name, p in final.items()}
    try:
        ranges: dict[int, list[int]] = {}
        shape = None
        with IndexedRecordWriter(temp["train.rec"], temp["train.idx"]) as w:
            w.write_key(0, pack_image(IRHeader(2, np.array([n + 1, n + 1 + c]), 0, 0), b""))
            for key, i in enumerate(order, 1):
                label = number[index.labels[i]]
                data = _encoded(index.items[i], quality)
                if shape is None:  # property's H,W: the first image's size
                    shape = decode_rgb(data, index.items[i]).shape
                w.write_key(key, pack_image(IRHeader(0, float(label), key, 0), data))
                ranges.setdefault(label, [key, key + 1])[1] = key + 1
            for label in range(c):
                header = IRHeader(2, np.array(ranges[label]), n + 1 + label, 0)
                w.write_key(n + 1 + label, pack_image(header, b""))
            w.close(sync=True)
        # insightface rec_builder's layout: C,H,W then the image count (checked on reading)
        temp["property"].write_text(f"{c},{shape[0]},{shape[1]}\n{n}\n")
        temp["identities.txt"].write_text("".join(f"{name}\n" for name in identities), "utf-8")
        final["train.idx"].unlink(missing_ok=True)
        for name in names:
            os.replace(temp[name], final[name])
    finally:
        for p in temp.values():
            p.unlink(missing_ok=True)
    return PackResult(final["train.rec"], n, c, final["train.rec"].stat().st_size, *shape[:2])
