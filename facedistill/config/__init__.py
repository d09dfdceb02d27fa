"""Recipes as typed, validated data."""

from facedistill.config.recipe import Recipe, load_recipe, recipe_from_dict, validate

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "validate"]
