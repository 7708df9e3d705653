"""The command line: the ``fvloss`` console script, one sub-command per module of this package.

Every command's parser and ``main(argv) -> exit status`` live here (library modules have none);
each fails the one way :func:`fvloss.cli.parser.fail` does. This file only dispatches, through
``importlib`` by name, so that ``fvloss --help`` does not pay for importing torch and fastai.
"""

from __future__ import annotations

import importlib
import sys

from .parser import quiet_library_warnings

COMMANDS = {
    "train": ("fvloss.cli.train", "train a recipe: fvloss train --loss arcface [--config FILE]"),
    "verify": (
        "fvloss.cli.verify",
        "score a run or an ONNX model on pair protocols / .bin sets / IJB",
    ),
    "align": ("fvloss.cli.align", "detect and align faces: fvloss align SRC DST"),
    "compare": ("fvloss.cli.compare", "compare run folders: one table, one ROC figure"),
    "embed": ("fvloss.cli.embed", "embed an image folder: paths + embeddings in one file"),
    "export": (
        "fvloss.cli.export",
        "export a run's embedder to ONNX: fvloss export RUN --onnx FILE",
    ),
    "identify": (
        "fvloss.cli.identify",
        "1:N identification: rank-k, TPIR@FPIR, distractors: fvloss identify --run RUN --data DIR",
    ),
    "import-weights": (
        "fvloss.cli.import_weights",
        "a released backbone as a run folder: fvloss import-weights insightface:FILE.pth",
    ),
    "pack": (
        "fvloss.cli.pack",
        "write an identity folder as RecordIO: fvloss pack FOLDER OUT_DIR",
    ),
    "pack-bin": ("fvloss.cli.pack_bin", "write a pair protocol as an insightface .bin"),
    "quality": (
        "fvloss.cli.quality",
        "error-vs-reject and the norm under degradation: fvloss quality RUN --pairs P",
    ),
    "study": (
        "fvloss.cli.study",
        "tune every loss with the same budget: fvloss study run STUDY.toml",
    ),
    "synthetic": ("fvloss.cli.synthetic", "write the embedded synthetic data set to a folder"),
}


def _usage() -> str:
    lines = ["usage: fvloss COMMAND [ARGS...]", "", "commands:"]
    width = max(map(len, COMMANDS))  # import-weights is the longest name
    lines += [f"  {name:<{width}} {desc}" for name, (_, desc) in COMMANDS.items()]
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
    quiet_library_warnings()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
