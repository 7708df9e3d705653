"""insightface ``.bin`` verification sets (lfw, cfp_fp, agedb_30, calfw, cplfw, vgg2_fp), no mxnet.

A ``.bin`` is ``pickle.dump((bins, issame_list), f)``: ``bins`` holds ``2 * P`` encoded images
(pair ``k`` is ``bins[2k]``, ``bins[2k + 1]``), ``issame_list`` ``P`` booleans. Files made with
Python 2 hold ``str`` items (read back as ``bytes``), Python 3 ones ``bytes``; re-packed files
may hold numpy ``uint8`` arrays (encoded bytes, or decoded ``HxWx3`` images) and a numpy bool
array of labels. insightface scores the pairs in 10 folds of consecutive pairs (sklearn
``KFold`` without shuffling), which :func:`read_bin_pairs` reproduces as ``PairSet.folds``.

Unpickling runs whatever callables a file names, so a ``.bin`` from the internet is code. The
reader here allows only the globals these files need (see :data:`_ALLOWED`) and rebuilds numpy
arrays itself, so that a file holding anything else is refused before any of it runs.

* :func:`load_bin` -> ``(images, issame)``; :func:`read_bin_pairs` -> a
  :class:`~fvloss.eval.protocols.PairSet` (the ``bin`` protocol of ``fvloss verify``);
* :func:`write_bin`, :func:`pack_bin`: write any protocol's pairs as a ``.bin``
  (``fvloss pack-bin PAIRS ROOT OUT.bin``), with each image's original file bytes.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ..imageio import ImageReadError, check_image_bytes
from ..jsonio import atomic_write
from .metrics import assign_folds
from .pairset import PairSet

__all__ = [
    "BinFileError",
    "BinFoldWarning",
    "kfold_ids",
    "load_bin",
    "pack_bin",
    "pack_order",
    "read_bin_pairs",
    "write_bin",
]

Image = bytes | np.ndarray


class BinFileError(ValueError):
    """A ``.bin`` is unreadable, malformed, or holds something other than images and labels."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class BinFoldWarning(UserWarning):
    """:func:`pack_bin`: the ``.bin``'s consecutive folds cannot be the protocol's folds."""


class _Refused(Exception):
    """Raised while unpickling by the allowed callables; :func:`load_bin` adds the file name."""


# ----------------------------------------------------------------------------- allowed globals
#
# A pickle rebuilds a numpy array by calling ``_reconstruct(ndarray, (0,), b"b")`` and then
# ``BUILD``ing it with ``(version, shape, dtype, fortran, data)``; the dtype is
# ``dtype("u1", False, True)`` BUILT with ``(3, "|", None, ...)``. Rather than hand numpy's own
# functions to the file (their arguments would then come from it: any dtype, any shape,
# structured dtypes), the allowed names map to the stand-ins below, which accept only uint8 and
# bool and build the array with ``np.frombuffer`` once its data has been checked.


class _Global:
    """An allowed global: calls ``fn``; refuses ``BUILD`` so a file cannot change its state."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable | None):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        if self.fn is None:
            raise _Refused(f"{self.name} may only be passed to numpy's _reconstruct")
        return self.fn(*args)

    def __setstate__(self, state) -> None:
        raise _Refused(f"refused to set state on {self.name}")


_DTYPES = {"u1": np.dtype(np.uint8), "b1": np.dtype(np.bool_)}


def _text(x) -> str | None:
    """A pickled string as ``str``: Python 2 strings arrive as ``bytes`` (``encoding="bytes"``)."""
    if isinstance(x, bytes):
        return x.decode("latin1")
    return x if isinstance(x, str) else None


def _raw(x) -> bytes:
    """Pickled array data as ``bytes``."""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    if isinstance(x, str):  # a Python 2 string read with encoding="latin1": lossless back
        return x.encode("latin1")
    raise _Refused(f"array data is a {type(x).__name__}, not bytes")


class _Dtype:
    """What ``numpy.dtype(spec, align, copy)`` returns: only ``u1`` or ``b1``."""

    __slots__ = ("dtype", "built")

    def __init__(self, spec, align=False, copy=False):
        dtype = _DTYPES.get(_text(spec) or "")
        if dtype is None:
            raise _Refused(f"refused numpy dtype {spec!r}: a .bin holds only uint8 and bool arrays")
        self.dtype, self.built = dtype, False

    def __setstate__(self, state) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]):
        # for u1/b1 only the byte order is set; subarrays or fields would make another dtype.
        ok = (
            not self.built
            and isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and _text(state[1]) in ("|", "<", ">", "=")
            and all(x is None for x in state[2:5])
        )
        if not ok:
            raise _Refused(f"refused numpy dtype state {state!r} for {self.dtype}")
        self.built = True


def _dtype_of(x) -> np.dtype:
    if not isinstance(x, _Dtype):
        raise _Refused(f"expected a numpy dtype, got a {type(x).__name__}")
    return x.dtype


def _array_from(data, dtype, shape, fortran: bool) -> np.ndarray:
    """The array of ``shape`` over ``data``, after checking the sizes agree."""
    dt = _dtype_of(dtype)
    if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
        raise _Refused(f"bad numpy array shape {shape!r}")
    raw = _raw(data)
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise _Refused(f"numpy array data holds {len(raw)} bytes, shape {shape} needs more or less")
    return np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")


class _Array:
    """What ``_reconstruct(ndarray, ...)`` returns; ``BUILD`` fills in :attr:`array` once.
    (Arrays stay wrapped until the file is read, so that no BUILD reaches numpy's own
    ``ndarray.__setstate__``.)"""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray | None = None):
        self.array = array

    def __setstate__(self, state) -> None:
        if self.array is not None or not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed numpy array state")
        shape, dtype, fortran, data = state[-4:]  # a 5-tuple starts with a version number
        self.array = _array_from(data, dtype, shape, bool(fortran))


def _reconstruct(subtype, shape=None, typecode=None) -> _Array:
    # The file's shape and type code are only placeholders: BUILD sets the real ones.
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct may only build a plain numpy.ndarray")
    return _Array()


def _frombuffer(buf, dtype, shape, order="C") -> _Array:
    # Protocol 5 pickles an array as _frombuffer(data, dtype, shape, order).
    return _Array(_array_from(buf, dtype, shape, _text(order) == "F"))


def _scalar(dtype, data=b"") -> bool:
    # A numpy bool in the labels (``issame_list`` of np.bool_): scalar(dtype('b1'), b'\x01').
    # Returned as a Python bool: numpy's True_/False_ are singletons a BUILD could reach.
    dt = _dtype_of(dtype)
    raw = _raw(data)
    if dt != np.bool_ or len(raw) != 1:
        raise _Refused(
            f"refused numpy scalar of dtype {dt}: only bool scalars (labels) are allowed"
        )
    return raw != b"\x00"


def _encode(text, encoding="utf-8") -> bytes:
    # Python 3 writes bytes in protocol 2 as _codecs.encode(latin-1 text, "latin1").
    if not isinstance(text, str) or _text(encoding) not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"refused _codecs.encode(..., {encoding!r}): only latin1 text is allowed")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    # Python 3 writes b"" in protocol 2 as a call of bytes() with no argument.
    if args:
        raise _Refused("refused bytes(...) with arguments")
    return b""


_NDARRAY = _Global("numpy.ndarray", None)

#: ``(module, name)`` a ``.bin`` may name -> what it gets instead. Each entry says why it is here.
_ALLOWED: dict[tuple[str, str], _Global] = {
    # numpy arrays (uint8 images, bool labels), numpy 1.x and 2.x module names:
    **{
        (mod, "_reconstruct"): _Global("numpy _reconstruct", _reconstruct)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    ("numpy", "ndarray"): _NDARRAY,  # the class argument of _reconstruct
    ("numpy", "dtype"): _Global("numpy.dtype", _Dtype),  # uint8 / bool only
    # protocol-5 arrays:
    **{
        (mod, "_frombuffer"): _Global("numpy _frombuffer", _frombuffer)
        for mod in ("numpy.core.numeric", "numpy._core.numeric")
    },
    # numpy bool labels:
    **{
        (mod, "scalar"): _Global("numpy scalar", _scalar)
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    ("_codecs", "encode"): _Global("_codecs.encode", _encode),  # py3 protocol-2 bytes
    **{(mod, "bytes"): _Global("bytes", _empty_bytes) for mod in ("builtins", "__builtin__")},
}


class _BinUnpickler(pickle.Unpickler):
    """Unpickles a ``.bin``, refusing every global outside :data:`_ALLOWED`."""

    def __init__(self, data: bytes, path: Path):
        # encoding="bytes": Python 2 strings (the images) stay bytes, as insightface loads them.
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise BinFileError(
                self.path,
                f"refused to load global {module}.{name}: a .bin holds only images and labels "
                "(bytes, uint8/bool numpy arrays); nothing it names outside those is run",
            )
        return allowed

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it names a persistent id")  # reported as foreign data


# ----------------------------------------------------------------------------- reading


def _unpickle(path: Path):
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BinFileError(path, f"cannot read file ({e.strerror or e})") from e
    if not data:
        raise BinFileError(path, "empty file")
    try:
        return _BinUnpickler(data, path).load()
    except BinFileError:
        raise
    except _Refused as e:
        raise BinFileError(path, str(e)) from None
    except RecursionError:
        raise BinFileError(path, "pickle nested too deeply: not an insightface .bin") from None
    except Exception as e:  # pickle raises many types for truncated or foreign data
        raise BinFileError(
            path, f"not a readable pickle (truncated, or not an insightface .bin): {e}"
        ) from None


def _unwrap(path: Path, x, what: str):
    if not isinstance(x, _Array):
        return x
    if x.array is None:
        raise BinFileError(path, f"{what} is a numpy array without its data")
    return x.array


def _image(path: Path, i: int, item) -> Image:
    """Item ``i`` of ``bins`` as bytes or a uint8 array (1-D encoded, or ``HxWx3`` decoded)."""
    item = _unwrap(path, item, f"image {i}")
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise BinFileError(path, f"image {i} is a {item.dtype} array, not uint8")
        if item.ndim == 1 or (item.ndim == 3 and item.shape[2] == 3):
            return item
        raise BinFileError(
            path, f"image {i} is a {item.shape} array: neither encoded (1-D) nor HxWx3"
        )
    raise BinFileError(path, f"image {i} is a {type(item).__name__}, not bytes or a uint8 array")


def _labels(path: Path, labels) -> np.ndarray:
    """``issame_list`` (bools, 0/1, numpy bools, or a bool / 0-1 uint8 array) as a bool array."""
    labels = _unwrap(path, labels, "issame")
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise BinFileError(path, f"issame is a {labels.shape} array, not 1-D")
        out = labels
    elif isinstance(labels, (list, tuple)):
        bad = [x for x in labels if not isinstance(x, (bool, int, np.bool_))]
        if bad:
            raise BinFileError(path, f"issame holds a {type(bad[0]).__name__}, not a bool")
        if any(x not in (0, 1) for x in labels):  # before numpy: a huge int would overflow
            raise BinFileError(path, "issame holds values other than true/false (0/1)")
        out = np.array(labels, dtype=bool)
    else:
        raise BinFileError(path, f"issame is a {type(labels).__name__}, not a list of bools")
    if out.dtype != np.bool_ and not np.isin(out, (0, 1)).all():
        raise BinFileError(path, "issame holds values other than true/false (0/1)")
    return out.astype(bool)


def load_bin(path: str | Path) -> tuple[list[Image], np.ndarray]:
    """Read an insightface ``.bin``: ``(images, issame)``.

    ``images`` holds ``2 * P`` items, each the encoded bytes or a uint8 array (1-D encoded, or
    a decoded ``HxWx3`` RGB image); ``issame`` is ``(P,)`` bool. Python 2 and Python 3 packs
    (any pickle protocol) are read. Raises :class:`BinFileError` naming the file for an
    unreadable, truncated or malformed file, or one naming anything but images and labels
    (which is refused before it runs).
    """
    path = Path(path)
    obj = _unpickle(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        what = (
            f"a {len(obj)}-item {type(obj).__name__}"
            if isinstance(obj, (tuple, list))
            else f"a {type(obj).__name__}"
        )
        raise BinFileError(path, f"expected a pair (images, issame), got {what}")
    bins, labels = obj
    if not isinstance(bins, (list, tuple)):
        raise BinFileError(path, f"images is a {type(bins).__name__}, not a list")
    issame = _labels(path, labels)
    if not len(issame):
        raise BinFileError(path, "no pairs (issame is empty)")
    if len(bins) != 2 * len(issame):
        raise BinFileError(
            path, f"{len(bins)} images for {len(issame)} pairs: a .bin holds 2 images per pair"
        )
    return [_image(path, i, x) for i, x in enumerate(bins)], issame


def kfold_ids(n: int, n_folds: int = 10) -> np.ndarray:
    """Fold ids of ``n`` pairs split as sklearn ``KFold(n_folds)`` without shuffling does:
    consecutive blocks, the first ``n % n_folds`` one pair longer (insightface's split)."""
    sizes = [n // n_folds + (g < n % n_folds) for g in range(n_folds)]
    return np.repeat(np.arange(n_folds, dtype=np.int64), sizes)


def _key(img: Image):
    """A dict key equal for identical images (bytes as themselves, arrays by a digest)."""
    if isinstance(img, bytes):
        return img
    return (img.shape, hashlib.blake2b(np.ascontiguousarray(img).data).digest())


def read_bin_pairs(path: str | Path) -> PairSet:
    """A ``.bin`` as a :class:`PairSet` with its images in memory and insightface's 10 folds.

    Identical images are kept once (``lfw.bin``'s 12,000 items hold ~7,700 distinct images),
    so each is decoded and embedded once, as for a pair file: an image's embedding does not
    depend on which pair it is in, so the scores are the same. ``paths[j]`` names the first
    item holding image ``j``: ``lfw.bin#17``.
    """
    path = Path(path)
    images, issame = load_bin(path)
    first: dict = {}
    ids = np.empty(len(images), dtype=np.int64)
    kept: list[Image] = []
    paths: list[Path] = []
    for i, img in enumerate(images):
        j = first.setdefault(_key(img), len(kept))
        if j == len(kept):
            kept.append(img)
            paths.append(Path(f"{path}#{i}"))
        ids[i] = j
    return PairSet(
        paths=paths,
        index=ids.reshape(-1, 2),
        same=issame,
        folds=kfold_ids(len(issame)),
        source=str(path),
        format="bin",
        images=kept,
        name=path.stem,
    )


# ----------------------------------------------------------------------------- writing


def _encoded(img: Image) -> bytes:
    """An item as encoded bytes; a decoded ``HxWx3`` RGB array becomes a (lossless) PNG."""
    if isinstance(img, (bytes, bytearray)):
        return bytes(img)
    img = np.asarray(img)
    if img.dtype == np.uint8 and img.ndim == 1:
        return img.tobytes()
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if ok:
            return buf.tobytes()
    raise ValueError(f"an image must be encoded bytes or an HxWx3 uint8 array, got {img.shape}")


def write_bin(path: str | Path, images: Sequence[Image], issame: Sequence[bool]) -> Path:
    """Write an insightface ``.bin`` (Python 3 pickle, protocol 4, ``bytes`` items), atomically.

    ``images`` holds 2 per pair (encoded bytes, 1-D uint8 arrays, or ``HxWx3`` RGB arrays,
    stored as PNG); ``issame`` one bool per pair.
    """
    labels = [bool(x) for x in np.asarray(issame, dtype=bool).reshape(-1)]
    if len(images) != 2 * len(labels):
        raise ValueError(f"{len(images)} images for {len(labels)} pairs: need 2 per pair")
    data = pickle.dumps(([_encoded(x) for x in images], labels), protocol=4)
    return atomic_write(path, data)


def _file_bytes(pairs: PairSet, i: int) -> bytes:
    """Image ``i`` of ``pairs``: its file's bytes as they are (or its in-memory item)."""
    if pairs.images is not None:
        return _encoded(pairs.images[i])
    p = Path(pairs.paths[i])
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageReadError(p, f"cannot read file ({e.strerror or e})") from e
    reason = check_image_bytes(data)
    if reason:
        raise ImageReadError(p, reason)
    return data


def describe_folds(pairs: PairSet) -> str:
    return "assigned (seed 0)" if pairs.folds is None else "the protocol's"


def pack_order(pairs: PairSet, n_folds: int = 10) -> np.ndarray:
    """The order :func:`pack_bin` writes the pairs in: pair ``k`` of the ``.bin`` is pair
    ``order[k]`` of ``pairs`` (grouped by fold, fold 0 first, protocol order within a fold).
    Warns (:class:`BinFoldWarning`) when the consecutive split cannot reproduce the folds."""
    folds = assign_folds(pairs.same, n_folds, seed=0) if pairs.folds is None else pairs.folds
    source = describe_folds(pairs)
    _, sizes = np.unique(folds, return_counts=True)
    want = np.bincount(kfold_ids(len(pairs), n_folds), minlength=n_folds)
    if len(sizes) != n_folds or (sizes != want).any():
        warnings.warn(
            f"{pairs.name or pairs.source}: {source} folds have sizes {sizes.tolist()}, but a "
            f".bin is split into {n_folds} consecutive folds of {want.tolist()}: its folds will "
            "differ from the protocol's",
            BinFoldWarning,
            stacklevel=2,
        )
    return np.argsort(folds, kind="stable")


def pack_bin(pairs: PairSet, out: str | Path, n_folds: int = 10) -> Path:
    """Write ``pairs`` (any protocol) as an insightface ``.bin``; returns ``out``.

    Each image is stored as its file's original bytes, so the ``.bin`` decodes to the very same
    pixels. Pairs are written grouped by fold, fold 0 first, so that the ``.bin``'s
    consecutive ``n_folds``-fold split (insightface's ``KFold``, :func:`kfold_ids`) is the
    protocol's folds: the protocol's own (LFW View 2, CFP) or, without them,
    ``assign_folds(same, n_folds, seed=0)``, the folds ``verify_scores`` assigns; its
    round-robin deal gives the first ``P % n_folds`` folds the extra pair, as ``KFold`` does.
    A consecutive split cannot reproduce folds of other sizes (a protocol with a different
    number of folds, or unequal folds after ``skip_missing`` dropped pairs): then a
    :class:`BinFoldWarning` says so and the ``.bin`` is written anyway.
    """
    if not len(pairs):
        raise ValueError("no pairs to pack")
    order = pack_order(pairs, n_folds)
    data = [_file_bytes(pairs, i) for i in range(len(pairs.paths))]  # each file read once
    images = [data[i] for k in order for i in pairs.index[k]]
    return write_bin(out, images, pairs.same[order])
