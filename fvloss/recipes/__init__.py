"""Recipes: ``python -m fvloss.recipes.<loss>`` for every registered loss, over one runner.

Each recipe is ``fvloss train`` (:mod:`fvloss.cli.train`, over the runner :mod:`fvloss.train`)
with its loss fixed. This package holds only the recipe modules. Rather than one file per
loss, copies that would differ in one word, the modules are made from the loss registry
(:data:`fvloss.losses.LOSSES`): importing this package adds one finder that answers only for
``fvloss.recipes.<name>`` where ``name`` is a registered loss and no file of that name exists.
So a new loss has its recipe module the moment it is registered.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

from ..cli.parser import quiet_library_warnings

# This package holds commands (``python -m fvloss.recipes.<loss>``), like the ``fvloss`` script:
# hide fastai's notice about its own use of torch.jit.script before the registry imports fastai.
quiet_library_warnings()

from ..losses import LOSSES  # noqa: E402  (after the filter above)

_SOURCE = '''"""Recipe: {name}, {summary}.

``python -m fvloss.recipes.{name} [--config FILE.toml] [--FLAG VALUE ...]``; everything but the
cost function comes from the shared defaults in :class:`fvloss.config.Config`.
"""

from fvloss.cli.train import recipe_main

main = recipe_main({name!r})

if __name__ == "__main__":
    raise SystemExit(main())
'''


class _LossRecipes(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    """Finder and loader of the recipe modules made from the loss registry."""

    def find_spec(self, fullname: str, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name.startswith("_"):
            return None  # not ours: every other import is left to the usual finders
        if name not in LOSSES:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=f"<recipe for {name}>")

    def get_source(self, fullname: str) -> str:
        name = fullname.rpartition(".")[2]
        return _SOURCE.format(name=name, summary=LOSSES[name].summary or "a registered loss")

    def is_package(self, fullname: str) -> bool:
        return False


if not any(isinstance(f, _LossRecipes) for f in sys.meta_path):
    sys.meta_path.append(_LossRecipes())  # after the path finders: real files win
