"""Recipe: ArcFace additive angular margin (Deng et al., CVPR 2019).

``python -m fvloss.recipes.arcface [--config FILE.toml] [--FLAG VALUE ...]``; everything but the
cost function comes from the shared defaults in :class:`fvloss.recipes.config.Config`.
"""

from .base import recipe_main

main = recipe_main("arcface")

if __name__ == "__main__":
    raise SystemExit(main())
