"""Recipe: softmax cross-entropy over a linear classifier (the assignment's baseline).

``python -m fvloss.recipes.softmax [--config FILE.toml] [--FLAG VALUE ...]``; everything but the
cost function comes from the shared defaults in :class:`fvloss.recipes.config.Config`.
"""

from .base import recipe_main

main = recipe_main("softmax")

if __name__ == "__main__":
    raise SystemExit(main())
