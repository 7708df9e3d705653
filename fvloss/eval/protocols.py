"""Face-verification pair protocols, all parsed into one :class:`PairSet`.

Every protocol yields the same thing, a :class:`PairSet` (unique images, pairs as index pairs,
labels, folds when the protocol defines them), so embedding, scoring, metrics and reports are
one code path whatever the protocol. :data:`PROTOCOLS` maps a name to its reader:

* ``lfw``, ``assignment``, ``csv``: the pair files below;
* ``cfp-fp`` / ``cfp-ff``: CFP (Sengupta et al., WACV 2016), frontal-to-profile and
  frontal-to-frontal, from the official ``Protocol/`` folder with its 10 folds;
* ``bin``: insightface's ``.bin`` verification sets (lfw, cfp_fp, agedb_30, ...), images held
  in memory (:mod:`fvloss.eval.bins`).

The pair-file formats:

* ``lfw``: LFW's ``pairs.txt``. A header, then ``name i j`` (same person) and
  ``name1 i name2 j`` (different people) lines; images at ``root/name/name_NNNN.jpg``. A header
  ``"10 300"`` (View 2) means 10 folds of 300 same then 300 different pairs, and the fold ids
  come from that layout; a single count ``"500"`` (View 1, e.g. ``pairsDevTest.txt``) means one
  set of 500 same then 500 different pairs, without folds.
* ``assignment``: no header, the same two line shapes, images at ``root/name_i.jpg`` (or
  ``.png``/``.jpeg``), with ``i`` written as in the file.
* ``csv``: ``path1,path2,same`` rows (paths relative to ``root`` or absolute, ``same`` one of
  1/0, true/false, yes/no, same/different), with an optional header row.

A malformed line or a missing image raises :class:`PairFileError` naming the file and line.
With ``skip_missing=True`` the pair is dropped instead and the reason is kept in
``PairSet.skipped``, so every report can say how many pairs it did not score.
"""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import numpy as np

from .bins import read_bin_pairs
from .pairset import PairFileError, PairSet, _Builder

__all__ = [
    "FORMATS",
    "PROTOCOLS",
    "protocol_names",
    "cfp_image_list",
    "read_cfp_pairs",
    "PairFileError",
    "PairSet",
    "detect_format",
    "read_pairs",
    "read_lfw_pairs",
    "read_assignment_pairs",
    "read_csv_pairs",
]

FORMATS = ("lfw", "assignment", "csv")  # pair files; PROTOCOLS (below) holds every protocol
_ASSIGNMENT_EXTS = (".jpg", ".png", ".jpeg")
_TRUE = {"1", "true", "yes", "same", "y", "t"}
_FALSE = {"0", "false", "no", "different", "diff", "n", "f"}


class _Problems:
    """Raise at the first problem, or (``skip_missing``) record it and go on."""

    def __init__(self, path: Path, skip: bool):
        self.path, self.skip = path, skip
        self.messages: list[str] = []

    def __call__(self, line: int, reason: str) -> None:
        if not self.skip:
            raise PairFileError(self.path, line, reason)
        self.messages.append(f"{self.path.name}, line {line}: {reason}")


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise PairFileError(path, None, f"cannot read pair file ({e.strerror or e})") from e
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), start=1) if s.strip()]


def _parse_pair_fields(fields: list[str]) -> tuple[str, str, str, str, bool]:
    """``name i j`` or ``name1 i name2 j`` -> (name1, i, name2, j, same); ValueError if neither."""
    if len(fields) == 3:
        name, i, j = fields
        name1 = name2 = name
        same = True
    elif len(fields) == 4:
        name1, i, name2, j = fields
        same = False
    else:
        raise ValueError(
            f"expected 'name i j' or 'name1 i name2 j', got {len(fields)} fields: {' '.join(fields)!r}"
        )
    for tok in (i, j):
        if not tok.isdigit():
            raise ValueError(f"image number {tok!r} is not a non-negative integer")
    return name1, i, name2, j, same


def _parse_header(path: Path, line: int, text: str) -> tuple[int, int]:
    """LFW header -> (n_folds, pairs per class per fold); a single count means one fold."""
    fields = text.split()
    if not 1 <= len(fields) <= 2 or not all(f.isdigit() for f in fields):
        raise PairFileError(path, line, f"expected an LFW header ('N' or 'FOLDS N'), got {text!r}")
    nums = [int(f) for f in fields]
    n_folds, per_class = (1, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    if n_folds < 1 or per_class < 1:
        raise PairFileError(path, line, f"header {text!r} describes no pairs")
    return n_folds, per_class


def _missing_hint(root: Path) -> str:
    """A hint for the usual mistake of pointing ``root`` one level too high."""
    if (root / "images").is_dir():
        return f" (root {root} has an 'images' folder: did you mean --root {root / 'images'}?)"
    return ""


def read_lfw_pairs(
    path: str | Path, root: str | Path | None = None, skip_missing: bool = False
) -> PairSet:
    """Read an LFW ``pairs.txt``-style file (see module docstring); ``root`` defaults to its folder."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    lines = _data_lines(path)
    if not lines:
        raise PairFileError(path, None, "empty pair file")
    n_folds, per_class = _parse_header(path, *lines[0])
    body = lines[1:]
    expected = n_folds * 2 * per_class
    if len(body) != expected:
        layout = f"{n_folds} folds x " if n_folds > 1 else ""
        raise PairFileError(
            path,
            lines[0][0],
            f"header promises {layout}{per_class} same + {per_class} different pairs "
            f"= {expected} lines, but the file has {len(body)} pair lines",
        )
    problems = _Problems(path, skip_missing)
    builder = _Builder(str(path))
    exists: dict[Path, bool] = {}
    hint = None
    for pos, (n, text) in enumerate(body):
        expect_same = pos % (2 * per_class) < per_class
        try:
            name1, i, name2, j, same = _parse_pair_fields(text.split())
        except ValueError as e:
            problems(n, str(e))
            continue
        if same != expect_same:
            fold = pos // (2 * per_class) + 1
            want = "same-person ('name i j')" if expect_same else "different-person"
            problems(n, f"expected a {want} line here (fold {fold} of the header's layout)")
            continue
        p1 = root / name1 / f"{name1}_{int(i):04d}.jpg"
        p2 = root / name2 / f"{name2}_{int(j):04d}.jpg"
        missing = [p for p in (p1, p2) if not exists.setdefault(p, p.is_file())]
        if missing:
            hint = _missing_hint(root) if hint is None else hint
            problems(n, f"image not found: {missing[0]}{hint}")
            continue
        builder.add(p1, p2, same, line=n, position=pos)
    builder.skipped = problems.messages
    folds = None
    if n_folds > 1:
        folds = np.array(builder.positions, dtype=np.int64) // (2 * per_class)
    return builder.build(folds=folds)


def _assignment_image(root: Path, name: str, i: str, cache: dict) -> Path | None:
    key = (name, i)
    if key not in cache:
        cache[key] = next(
            (p for ext in _ASSIGNMENT_EXTS if (p := root / f"{name}_{i}{ext}").is_file()), None
        )
    return cache[key]


def read_assignment_pairs(
    path: str | Path, root: str | Path | None = None, skip_missing: bool = False
) -> PairSet:
    """Read the assignment's header-less pair list; images are ``root/name_i.jpg`` or ``.png``."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    lines = _data_lines(path)
    if not lines:
        raise PairFileError(path, None, "empty pair file")
    problems = _Problems(path, skip_missing)
    builder = _Builder(str(path))
    cache: dict = {}
    for n, text in lines:
        try:
            name1, i, name2, j, same = _parse_pair_fields(text.split())
        except ValueError as e:
            problems(n, str(e))
            continue
        found = []
        for name, k in ((name1, i), (name2, j)):
            p = _assignment_image(root, name, k, cache)
            if p is None:
                tried = ", ".join(f"{name}_{k}{ext}" for ext in _ASSIGNMENT_EXTS)
                problems(n, f"image not found: tried {tried} in {root}")
                break
            found.append(p)
        else:
            builder.add(found[0], found[1], same, line=n)
    builder.skipped = problems.messages
    return builder.build()


def _parse_label(text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ValueError(f"'same' must be 1/0, true/false, yes/no or same/different, got {text!r}")


def read_csv_pairs(
    path: str | Path, root: str | Path | None = None, skip_missing: bool = False
) -> PairSet:
    """Read ``path1,path2,same`` rows; a first row whose ``same`` is not a label is a header."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(n, row) for n, row in enumerate(csv.reader(f), start=1)]
    except (OSError, csv.Error) as e:
        raise PairFileError(path, None, f"cannot read CSV ({e})") from e
    rows = [(n, [c.strip() for c in row]) for n, row in rows if any(c.strip() for c in row)]
    if not rows:
        raise PairFileError(path, None, "empty pair file")
    problems = _Problems(path, skip_missing)
    builder = _Builder(str(path))
    exists: dict[Path, bool] = {}
    for k, (n, row) in enumerate(rows):
        if len(row) != 3:
            problems(n, f"expected 3 columns path1,path2,same, got {len(row)}")
            continue
        # The optional header: a first row naming no image whose 'same' cell is not a label
        # or is the column name itself ("path1,path2,same"). A typo in a first data row whose
        # images exist is still reported below.
        if k == 0 and not any((root / p).is_file() for p in row[:2]):
            if row[2].lower() == "same" or row[2].lower() not in _TRUE | _FALSE:
                continue
        try:
            same = _parse_label(row[2])
        except ValueError as e:
            problems(n, str(e))
            continue
        p1, p2 = (Path(p) if Path(p).is_absolute() else root / p for p in row[:2])
        missing = [p for p in (p1, p2) if not exists.setdefault(p, p.is_file())]
        if missing:
            problems(n, f"image not found: {missing[0]}")
            continue
        builder.add(p1, p2, same, line=n)
    builder.skipped = problems.messages
    return builder.build()


def read_cfp_pairs(
    path: str | Path,
    root: str | Path | None = None,
    skip_missing: bool = False,
    split: str = "FP",
) -> PairSet:
    """CFP's official protocol: ``split`` ``"FP"`` (frontal-profile) or ``"FF"``.

    ``path`` is the CFP folder (holding ``Protocol/``) or its ``Protocol`` folder.
    ``Protocol/Pair_list_{F,P}.txt`` number the images (``N ../Data/Images/001/frontal/01.jpg``);
    ``Protocol/Split/<split>/01..10/{same,diff}.txt`` hold ``a,b`` image numbers, 350 same and
    350 different pairs per fold (for FP, ``a`` frontal and ``b`` profile). The fold ids come
    from the folder names, as the protocol reports accuracy: mean and std over the 10 folds.
    ``root`` replaces ``Data/Images`` (e.g. an aligned copy made by ``fvloss align``).
    """
    path = Path(path)
    proto = path if (path / "Split").is_dir() else path / "Protocol"
    split = split.upper()
    if split not in ("FP", "FF"):
        raise ValueError(f"CFP split must be 'FP' or 'FF', got {split!r}")
    if not (proto / "Split" / split).is_dir():
        raise PairFileError(path, None, f"not a CFP folder: no Protocol/Split/{split} in it")
    images = proto.parent / "Data" / "Images"
    root = images if root is None else Path(root)
    lists = {k: cfp_image_list(proto / f"Pair_list_{k}.txt") for k in ("F", "P")}
    second = "P" if split == "FP" else "F"
    builder = _Builder(str(path))
    exists: dict[Path, bool] = {}
    folds: list[int] = []
    fold_dirs = sorted(d for d in (proto / "Split" / split).iterdir() if d.is_dir())
    if not fold_dirs:
        raise PairFileError(proto / "Split" / split, None, "no fold folders (01..10)")
    for g, fold_dir in enumerate(fold_dirs):
        for fname, same in (("same.txt", True), ("diff.txt", False)):
            f = fold_dir / fname
            problems = _Problems(f, skip_missing)
            for n, text in _data_lines(f):
                fields = [t.strip() for t in text.split(",")]
                if len(fields) != 2 or not all(t.isdigit() for t in fields):
                    raise PairFileError(f, n, f"expected 'a,b' image numbers, got {text!r}")
                a, b = int(fields[0]), int(fields[1])
                missing_no = [(k, x) for k, x in (("F", a), (second, b)) if x not in lists[k]]
                if missing_no:
                    k, x = missing_no[0]
                    raise PairFileError(f, n, f"image number {x} is not in Pair_list_{k}.txt")
                p1, p2 = root / lists["F"][a], root / lists[second][b]
                gone = [p for p in (p1, p2) if not exists.setdefault(p, p.is_file())]
                if gone:
                    problems(n, f"image not found: {gone[0]}")
                    continue
                builder.add(p1, p2, same, line=n)
                folds.append(g)
            # the file's own name is ambiguous (20 same.txt): say which fold it is
            builder.skipped += [f"{split}/{fold_dir.name}/{m}" for m in problems.messages]
    pairs = builder.build(folds=np.array(folds, dtype=np.int64))
    pairs.name = f"cfp-{split.lower()}"
    return pairs


def cfp_image_list(path: Path) -> dict[int, str]:
    """``Pair_list_F.txt`` -> {image number: path relative to ``Data/Images``}."""
    out: dict[int, str] = {}
    for n, text in _data_lines(path):
        fields = text.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise PairFileError(path, n, f"expected 'N path', got {text!r}")
        rel = fields[1].strip().replace("\\", "/")
        marker = "Data/Images/"
        if marker not in rel:
            raise PairFileError(path, n, f"path {rel!r} is not under Data/Images")
        out[int(fields[0])] = rel.split(marker, 1)[1]
    return out


def _read_bin(path: str | Path, root: str | Path | None = None, skip_missing: bool = False):
    return read_bin_pairs(path)  # images in memory: root and skip_missing do not apply


PROTOCOLS = {
    "lfw": read_lfw_pairs,
    "assignment": read_assignment_pairs,
    "csv": read_csv_pairs,
    "cfp-fp": partial(read_cfp_pairs, split="FP"),
    "cfp-ff": partial(read_cfp_pairs, split="FF"),
    "bin": _read_bin,
}


def protocol_names() -> tuple[str, ...]:
    """Every protocol :func:`read_pairs` reads, plus ``auto``."""
    return ("auto", *PROTOCOLS)


def detect_format(path: str | Path) -> str:
    """Guess the protocol from the path: ``bin`` for ``.bin``, ``csv`` for ``.csv``, else
    ``lfw`` or ``assignment`` from the first non-blank line. A CFP folder is ambiguous (FP or
    FF?): an error asks for ``--protocol``."""
    path = Path(path)
    if path.is_dir():
        if (path / "Protocol" / "Split").is_dir() or (path / "Split").is_dir():
            raise PairFileError(path, None, "a CFP folder: choose --protocol cfp-fp or cfp-ff")
        raise PairFileError(path, None, "a folder, not a pair file (a CFP folder needs --protocol)")
    if path.suffix.lower() == ".bin":
        return "bin"
    if path.suffix.lower() == ".csv":
        return "csv"
    lines = _data_lines(path)
    if not lines:
        raise PairFileError(path, None, "empty pair file")
    first = lines[0][1]
    if "," in first:
        return "csv"
    fields = first.split()
    if 1 <= len(fields) <= 2 and all(f.isdigit() for f in fields):
        return "lfw"
    return "assignment"


def read_pairs(
    path: str | Path,
    root: str | Path | None = None,
    format: str = "auto",
    skip_missing: bool = False,
) -> PairSet:
    """Read a pair protocol: a pair file, a CFP folder or a ``.bin`` (see :data:`PROTOCOLS`).

    ``format`` is a protocol name or ``auto``. ``root`` is the image folder (default: the pair
    file's folder; CFP's ``Data/Images``). Raises :class:`PairFileError` at the first malformed
    line or missing image unless ``skip_missing``, and also when no pair is left.
    """
    path = Path(path)
    if not path.exists():
        raise PairFileError(path, None, "cannot read pair file (not found)")
    if format == "auto":
        format = detect_format(path)
    if format not in PROTOCOLS:
        raise ValueError(
            f"unknown pair format (protocol) {format!r}; expected one of {protocol_names()}"
        )
    pairs = PROTOCOLS[format](path, root, skip_missing)
    pairs.format = format
    if len(pairs) == 0:
        first = f"; first problem: {pairs.skipped[0]}" if pairs.skipped else ""
        raise PairFileError(path, None, f"no usable pairs ({pairs.n_skipped} skipped){first}")
    return pairs
