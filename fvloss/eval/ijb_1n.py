"""IJB-B / IJB-C 1:N identification from the official meta files.

Beside the 1:1 files (:mod:`fvloss.eval.ijb`), the release's ``meta/`` holds::

    ijbc_1N_gallery_G1.csv   TEMPLATE_ID,SUBJECT_ID,FILENAME,...   gallery 1 (IJB-B: _S1)
    ijbc_1N_gallery_G2.csv   the same for gallery 2 (disjoint subjects; IJB-B: _S2)
    ijbc_1N_probe_mixed.csv  probe templates (stills and video frames mixed)

one row per image of a template (a header row first). Templates are pooled exactly as for 1:1
(:func:`~fvloss.eval.ijb.template_features`: media mean, template sum, L2 norm).

Two ways to search, by ``gallery``:

* ``"G1"`` or ``"G2"`` (the protocol's own, as NIST reports IJB 1:N): one gallery; probes of
  the other gallery's subjects are non-mated, so the result is open set: rank-k over the mated
  probes and TPIR at FPIR = 1e-2, 1e-1 over all of them;
* ``"both"``: G1 and G2 as one gallery, every probe mated: closed-set rank-k, as insightface's
  ``ijb_1n.py`` prints top-1/5/10. (That script's "far" then counts every non-matching
  probe-gallery *pair* above the threshold, not probes: its TPIR column is not NIST's TPIR@FPIR
  and is not computed here.)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .identify import IdentificationResult, identify, probe_key
from .ijb import IJBFormatError, IJBSet, _locate, template_features

__all__ = ["GALLERIES", "evaluate_ijb_1n", "ident_paths", "read_1n_lists", "write_1n_lists"]

GALLERIES = ("G1", "G2", "both")


def ident_paths(root: str | Path, name: str) -> dict[str, Path]:
    """The three 1:N meta files of ``name`` ("IJBB"/"IJBC") under ``root``."""
    p, meta = name.lower(), Path(root) / "meta"
    g = ("S1", "S2") if name.upper() == "IJBB" else ("G1", "G2")
    return {
        "G1": meta / f"{p}_1N_gallery_{g[0]}.csv",
        "G2": meta / f"{p}_1N_gallery_{g[1]}.csv",
        "probe": meta / f"{p}_1N_probe_mixed.csv",
    }


def _read_list(path: Path) -> dict[int, int]:
    """template id -> subject id of one 1:N list (a header row, then one row per image)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing IJB 1:N meta file (TEMPLATE_ID,SUBJECT_ID,...)")
    out: dict[int, tuple[int, int]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for no, row in enumerate(csv.reader(f), 1):
            if no == 1 or not row:
                continue  # the header
            try:
                t, s = int(row[0]), int(row[1])
            except (ValueError, IndexError):
                raise IJBFormatError(
                    path, no, f"expected TEMPLATE_ID,SUBJECT_ID,... integers, got {row[:2]}"
                ) from None
            first = out.setdefault(t, (s, no))
            if first[0] != s:
                raise IJBFormatError(
                    path, no, f"template {t} is subject {s} here, {first[0]} on line {first[1]}"
                )
    if not out:
        raise IJBFormatError(path, None, "no templates listed")
    return {t: s for t, (s, _) in out.items()}


def read_1n_lists(root: str | Path, name: str | None = None) -> dict[str, dict[int, int]]:
    """``{"G1": {template: subject}, "G2": ..., "probe": ...}`` from the release's meta files."""
    root, name = _locate(Path(root), name)
    lists = {k: _read_list(p) for k, p in ident_paths(root, name).items()}
    shared = set(lists["G1"].values()) & set(lists["G2"].values())
    if shared:
        raise IJBFormatError(
            ident_paths(root, name)["G2"], None,
            f"{len(shared)} subjects are in both galleries (e.g. {min(shared)}); they must be disjoint",
        )  # fmt: skip
    return lists


def evaluate_ijb_1n(
    ijb: IJBSet,
    lists: dict[str, dict[int, int]],
    image_embeddings: np.ndarray,
    gallery: str = "G1",
    **identify_options,
) -> tuple[IdentificationResult, dict[str, int]]:
    """Identify the probe templates against ``gallery`` (see the module docstring).

    Returns the result and counts: templates per list, and those dropped because none of
    their images was read (``read_ijb(..., skip_missing=True)``).
    """
    if gallery not in GALLERIES:
        raise ValueError(f"gallery must be one of {GALLERIES}, got {gallery!r}")
    tids, feats = template_features(ijb, image_embeddings)
    row_of = {int(t): i for i, t in enumerate(tids)}
    counts: dict[str, int] = {}

    def side(which: list[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        items = [(t, s) for k in which for t, s in sorted(lists[k].items())]
        kept = [(row_of[t], s) for t, s in items if t in row_of]
        counts["+".join(which)] = len(kept)
        counts[f"dropped_{'+'.join(which)}"] = len(items) - len(kept)
        if not kept:
            raise ValueError(f"IJB 1:N: no {'/'.join(which)} template has images")
        rows, subjects = zip(*kept)
        t_ids = [int(tids[r]) for r in rows]
        return feats[list(rows)].astype(np.float32), np.asarray(subjects), t_ids

    g_feats, g_subj, _ = side(["G1", "G2"] if gallery == "both" else [gallery])
    p_feats, p_subj, p_tids = side(["probe"])
    res = identify(g_feats, g_subj, p_feats, p_subj, open_set=gallery != "both", **identify_options)
    res.probe_key = probe_key([f"{ijb.name} {gallery}:{t}" for t in p_tids], p_subj)
    return res, counts


def write_1n_lists(root: str | Path, name: str, lists: dict[str, dict[int, int]]) -> None:
    """Write the three 1:N meta files (one row per template) beside a layout written by
    :func:`~fvloss.eval.ijb.write_ijb_layout`, for tests and hand-made sets."""
    for key, path in ident_paths(root, name).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{t},{s},t{t}\n" for t, s in sorted(lists[key].items()))
        path.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + rows)
