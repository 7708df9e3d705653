"""Files fvloss writes that another step reads back: always whole, never half-written.

One helper for every JSON and binary output (run folders' ``config.json`` / ``metrics.json``,
verification reports, score files, checkpoints' metadata): write to a temporary file beside
the target, then ``os.replace`` it, so an interrupted process leaves the old file or the new
one, never a torn one. JSON is strict (``allow_nan=False``): NaN and infinities become ``null``
so that any JSON parser, not only Python's, reads the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "finite", "read_json", "write_json"]


def atomic_write(path: str | Path, data: bytes | str, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created). ``fsync``: also
    flush it to the disk before the rename, so that a machine's crash (not only the
    process's) leaves a whole file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def finite(obj: Any) -> Any:
    """``obj`` ready for strict JSON: NaN / infinities -> ``None``, numpy scalars and arrays ->
    Python numbers and lists, tuples -> lists, paths -> strings."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON (see :func:`finite`), atomically."""
    text = json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)
    return atomic_write(path, text + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``; ``default`` when the file is absent. A file that exists but does
    not parse raises ``ValueError`` naming it (unless ``default`` is given: then ``default``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except ValueError as e:
        if default is not None:
            return default
        raise ValueError(f"{path}: not valid JSON ({e})") from None
