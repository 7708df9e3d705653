"""One ``ArgumentParser`` for every fvloss command: examples under ``--help``, and a misspelt
flag or choice answered with the closest known one (argparse only learns that in 3.12+)."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import warnings
from collections.abc import Sequence

__all__ = ["Parser", "fail", "quiet_library_warnings"]


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``examples`` (command lines shown under ``--help``) and
    suggestions for unknown flags and invalid choices."""

    def __init__(self, *args, examples: Sequence[str] = (), **kwargs):
        if examples:
            kwargs["epilog"] = "examples:\n" + "\n".join(f"  {e}" for e in examples)
            kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        super().error(message + self._suggestion(message))

    def _suggestion(self, message: str) -> str:
        if message.startswith("unrecognized arguments:"):
            flags = [a for a in message.split(":", 1)[1].split() if a.startswith("-")]
            known = [o for a in self._actions for o in a.option_strings]
            hints = []
            for flag in flags:
                close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"{flag}: did you mean {close[0]}?")
            return ("\n" + "\n".join(hints)) if hints else ""
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            options = re.findall(r"'([^']*)'", m.group(2))
            close = difflib.get_close_matches(m.group(1), options, n=1, cutoff=0.5)
            return f"\ndid you mean {close[0]!r}?" if close else ""
        return ""


def fail(prog: str, message: str, code: int = 2) -> int:
    """The one way a command stops on bad input: ``PROG: message`` on stderr, and the exit
    status to return (2: bad input, as argparse's own errors; 1: a file that could not be
    read; each command's ``--help`` says which it uses)."""
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def quiet_library_warnings() -> None:
    """Hide deprecation notices that libraries raise about their own code, which a user cannot
    act on: fastai 2.8 calls ``torch.jit.script`` at import, which torch now deprecates. Called
    by the commands only (the ``fvloss`` script; importing :mod:`fvloss.recipes`, whose modules
    are commands), not by the library, so a notebook using the library keeps its filters."""
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
