"""Recipe: softmax + center loss (Wen et al., ECCV 2016), lambda 0.003, alpha 0.5.

``python -m fvloss.recipes.center [--config FILE.toml] [--FLAG VALUE ...]``; everything but the
cost function comes from the shared defaults in :class:`fvloss.recipes.config.Config`.
"""

from .base import recipe_main

main = recipe_main("center")

if __name__ == "__main__":
    raise SystemExit(main())
