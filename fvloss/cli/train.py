"""``fvloss train`` and ``python -m fvloss.recipes.<loss>``: flags and experiment files to a
:class:`~fvloss.config.Config` (:func:`resolve_config`), then the runner (:func:`fvloss.train.run`).

Every flag comes from a :class:`~fvloss.config.Config` field (its help and default from the
field's metadata) or from a loss setting in the registry (``--arcface-s``); all default to "not
given", so only what the user typed overrides the lower layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import fields
from typing import Any

from .. import ranks
from ..bodies import BODIES
from ..callbacks.checkpoint import RunInterrupted
from ..callbacks.guard import TrainingDiverged
from ..callbacks.precision import PRECISIONS
from ..config import Config
from ..experiment import load_experiment, plan, resolve
from ..losses import LOSSES
from ..train import run
from .parser import Parser, quiet_library_warnings

__all__ = ["build_parser", "main", "parse_flags", "recipe_main", "resolve_config"]


def _scale(v: str) -> float | str:
    return v if v == "auto" else float(v)


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def _flag_type(default: Any, scale: bool) -> dict[str, Any]:
    """argparse options for a loss setting like ``default``."""
    if scale or default == "auto":
        return {"type": _scale, "metavar": "S|auto"}
    if isinstance(default, bool):
        return {"type": _bool, "nargs": "?", "const": True, "metavar": "BOOL"}
    return {"type": type(default), "metavar": type(default).__name__.upper()}


def build_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """A parser with ``--config``, one flag per :class:`Config` field and one per loss setting
    (``--arcface-s``), all defaulting to "not given" so that only what the user typed overrides
    the lower layers."""
    run = prog if prog.startswith("python -m") else f"{prog} --loss arcface"
    ap = Parser(
        prog=prog, description=description, argument_default=argparse.SUPPRESS,
        examples=[f"{run}                      # the embedded synthetic set, in minutes",
                  f"{run} --config recipes/celeba64.toml",
                  f"{run} --data DIR --epochs 20 --arcface-m 0.4 --pairs ../shared/data/cfp "
                  "--pairs-format cfp-fp --pairs-root data/cfp-aligned",
                  f"{run} --resume runs/arcface-20261201-101500 --epochs 30"],
    )  # fmt: skip
    ap.add_argument(
        "--config", metavar="TOML", help="experiment file (see recipes/); flags override it"
    )
    # choices the registries know at run time; the others are the fields' own
    choices = {"loss": sorted(LOSSES), "precision": PRECISIONS}
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        t = f.type if isinstance(f.type, str) else str(f.type)
        if f.name in ("extra_aug", "loss_settings"):
            continue  # tables: set them in TOML (loss settings also by the flags below)
        kw: dict[str, Any] = {"help": _help(f)}
        if f.name in choices or f.metadata.get("choices"):
            kw["choices"] = choices.get(f.name) or f.metadata["choices"]
        elif f.name == "arch":
            kw.update(metavar="BODY", help=f"{kw['help']}: {', '.join(BODIES)}")
        elif t == "bool":
            kw.update(type=_bool, nargs="?", const=True, metavar="BOOL")
        elif f.name == "val_bins":
            kw.update(nargs="+", metavar="BIN")
        else:
            item = t[5:-1] if t.startswith("list[") else t  # a list's items' type
            kw["type"] = (
                int if item.startswith("int") else float if item.startswith("float") else str
            )
        if t.startswith("list"):
            kw["nargs"] = "*"  # none given: the empty list (e.g. --wd-exclude: decay everything)
        ap.add_argument(flag, **kw)
    ap.add_argument(
        "--dry-run", action="store_true",
        help="resolve the settings and print the schedule (steps, lr at its landmarks, images "
        "seen) without reading data or training; default off",
    )  # fmt: skip
    ap.add_argument(
        "--world", type=int, metavar="N",
        help="--dry-run: the number of processes (GPUs) the run will have; default this "
        "launch's (1 unless under torchrun)",
    )  # fmt: skip
    for name, spec in LOSSES.items():
        group = ap.add_argument_group(f"{name} settings ({spec.summary})")
        docs = spec.setting_docs()
        for key, default in spec.settings.items():
            group.add_argument(
                f"--{name}-{key}".replace("_", "-"),
                dest=f"{name}.{key}",
                help=f"{docs.get(key, key).rstrip('.')}; default {default!r}",
                **_flag_type(default, scale=key == "s"),
            )
    return ap


def _help(f: dataclasses.Field) -> str:
    """A flag's help: the field's documentation and its default."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    shown = (
        "none"
        if default is None
        else str(default).lower()
        if isinstance(default, bool)
        else repr(default)
    )
    return f"{f.metadata.get('help') or f.name}; default {shown}"


def resolve_config(
    argv: list[str] | None,
    recipe: dict[str, Any] | None = None,
    prog: str = "fvloss train",
    options: dict[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """Parse ``argv`` (``--config FILE`` and flags) and layer it over the defaults and the
    recipe's settings (:func:`fvloss.experiment.resolve`); returns the config and where each
    non-default setting came from. ``options`` receives the command's own options given
    (``dry_run``, ``world``)."""
    config, flags = parse_flags(argv, prog, options)
    toml = load_experiment(config) if config else {}
    return resolve(recipe, toml, flags, prog)


def parse_flags(
    argv: list[str] | None, prog: str = "fvloss train", options: dict[str, Any] | None = None
) -> tuple[str | None, dict[str, Any]]:
    """``argv`` as the experiment file it names (``--config``) and the settings its flags
    give (loss settings as ``loss_settings`` tables); the command's own options (``dry_run``,
    ``world``) go to ``options``."""
    args = vars(build_parser(prog).parse_args(argv))
    for k in ("dry_run", "world"):  # options of this command, not settings of the run
        value = args.pop(k, None)
        if options is not None and value is not None:
            options[k] = value
    config = args.pop("config", None)
    flag_tables: dict[str, dict[str, Any]] = {}
    for k in [k for k in args if "." in k]:
        loss, key = k.split(".", 1)
        flag_tables.setdefault(loss, {})[key] = args.pop(k)
    if flag_tables:
        args["loss_settings"] = flag_tables
    return config, args


def main(
    argv: list[str] | None = None, recipe: dict[str, Any] | None = None, prog: str = "fvloss train"
) -> int:
    """Command-line entry: ``fvloss train [--loss L] [--config FILE] [--FLAG VALUE ...]``.

    Bad input (a missing folder or file, an unreadable image, an invalid setting, a run folder
    that already holds a run) ends with one line naming the problem and exit status 2, not a
    traceback; a run stopped by the divergence guard with one line and exit status 3; a run
    stopped by SIGTERM / SIGINT, after writing its checkpoint, with one line and the shell's
    128 + signal number (143 / 130); ``FVLOSS_DEBUG=1`` re-raises for the traceback.
    """
    quiet_library_warnings()
    try:
        options: dict[str, Any] = {}
        cfg, source = resolve_config(argv, recipe, prog=prog, options=options)
        if options.get("dry_run"):
            print(plan(cfg, options.get("world") or ranks.world_size()))
            return 0
        run(cfg, source)
    except Exception as e:
        status = _stop_status(e)
        if os.environ.get("FVLOSS_DEBUG") or not (status or isinstance(e, (OSError, ValueError))):
            raise
        what = "stopped" if status == 128 + getattr(e, "signum", -128) else "error"
        print(f"{prog}: {what}: {getattr(e, 'message', e)}", file=sys.stderr)
        return status or 2
    return 0


def _stop_status(e: BaseException) -> int:
    """The exit status of a run stopped on purpose (the divergence guard: 3; a signal: 128 +
    its number), else 0."""
    if isinstance(e, TrainingDiverged):
        return 3
    return 128 + e.signum if isinstance(e, RunInterrupted) else 0


def recipe_main(loss: str, **overrides: Any):
    """The ``main(argv=None)`` of a recipe module that trains ``loss``."""

    def main_(argv: list[str] | None = None) -> int:
        return main(argv, {"loss": loss, **overrides}, prog=f"python -m fvloss.recipes.{loss}")

    main_.__doc__ = f"Train and evaluate the {loss} recipe; ``--help`` lists the flags."
    return main_
