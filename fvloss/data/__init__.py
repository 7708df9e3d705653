"""Identity-labelled face data as fastai ``DataLoaders``, in three layers:

* **scan and index** (:mod:`.index`): what a source holds (:class:`IdentityIndex`), what was
  left out and why (:class:`DataReport`), the identity split (:func:`split_identities`);
* **sources**: a folder ``root/<identity>/<image>`` (:mod:`.folder`), an insightface RecordIO
  set (:mod:`.recordio`), a packed index for millions of images (:mod:`.stream`), and the
  embedded synthetic set (:mod:`.synthetic`);
* **loaders**: Albumentations pipelines bridged into fastai (:mod:`.transforms`), the seeded
  per-image loader (:mod:`.seeded`), images preloaded and augmented on the device
  (:mod:`.preload`, :mod:`.device_aug`), and :func:`face_dls`, which puts them together
  (:mod:`.loaders`).

The names below are imported on first use (PEP 562), not with the package: ``fvloss pack``
and the RecordIO reader (:mod:`.recordio`, numpy only) must not pay for importing fastai.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DataReport": "index",
    "IdentityIndex": "index",
    "split_identities": "index",
    "scan_identities": "folder",
    "RecordSetIndex": "recordio",
    "scan_records": "recordio",
    "train_pipeline": "transforms",
    "eval_pipeline": "transforms",
    "EvalTransform": "transforms",
    "AlbumentationsTransform": "transforms",
    "ValidImages": "loaders",
    "default_workers": "loaders",
    "face_dls": "loaders",
}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
