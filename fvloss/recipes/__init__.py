"""Recipes: one small module per experiment over the shared runner in :mod:`.base`."""
