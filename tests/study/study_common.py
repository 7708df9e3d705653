"""Helpers of the study tests: a tiny study file over a synthetic set, a pair file on it."""

from __future__ import annotations

import csv
from pathlib import Path

TINY_SETTINGS = (
    'img_size = 32\narch = "resnet18"\nemb_dim = 16\nbs = 16\nval_pairs = 100\nworkers = 0\n'
    'log = ["none"]\nguard = false\nlr = 1e-3\n'
)


def write_study(tmp_path: Path, data: Path | None = None, head: str = "", tail: str = "") -> Path:
    """``study.toml`` in ``tmp_path``: softmax and arcface, 2 trials of 1 epoch; ``head``
    goes before the tables, ``tail`` after them."""
    settings = f'[settings]\ndata = "{data}"\n{TINY_SETTINGS}' if data else ""
    p = tmp_path / "study.toml"
    p.write_text(
        f'name = "tiny"\nlosses = ["softmax", "arcface"]\ntrials = 2\nepochs = 1\n'
        f'out = "{tmp_path / "studies"}"\n{head}\n{settings}\n[space]\nlr = [1e-4, 3e-3, "log"]\n'
        f"{tail}\n"
    )
    return p


def write_pairs(syn: Path, path: Path, n_ids: int) -> Path:
    """Same pairs (images 0 and 1 of an identity) and different ones (image 2 of one, 3 of
    the next) over a synthetic set: a CSV pair file."""
    rows = [["path1", "path2", "same"]]
    for i in range(n_ids):
        j = (i + 1) % n_ids
        rows.append([f"id{i:04d}/id{i:04d}_000.png", f"id{i:04d}/id{i:04d}_001.png", "1"])
        rows.append([f"id{i:04d}/id{i:04d}_002.png", f"id{j:04d}/id{j:04d}_003.png", "0"])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path
