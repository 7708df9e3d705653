"""The ``fvloss`` console script: one entry point, one sub-command per tool.

Each sub-command lives in its own module with a ``main(argv)``; this file only dispatches, and
imports lazily so that ``fvloss --help`` does not pay for importing torch and fastai.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("fvloss.recipes.base", "train a recipe: fvloss train --loss arcface [--config FILE]"),
    "verify": (
        "fvloss.eval.verify_cli",
        "score a run or an ONNX model on pair protocols / .bin sets / IJB",
    ),
    "align": ("fvloss.align", "detect and align faces: fvloss align SRC DST"),
    "compare": ("fvloss.eval.compare", "compare run folders: one table, one ROC figure"),
    "embed": ("fvloss.eval.embed_cli", "embed an image folder: paths + embeddings in one file"),
    "export": ("fvloss.export", "export a run's embedder to ONNX: fvloss export RUN --onnx FILE"),
    "pack": ("fvloss.recordio", "write an identity folder as RecordIO: fvloss pack FOLDER OUT_DIR"),
    "pack-bin": ("fvloss.eval.bins", "write a pair protocol as an insightface .bin"),
    "synthetic": ("fvloss.synthetic", "write the embedded synthetic data set to a folder"),
}


def _usage() -> str:
    lines = ["usage: fvloss COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fvloss: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .recipes.base import quiet_library_warnings

    quiet_library_warnings()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
