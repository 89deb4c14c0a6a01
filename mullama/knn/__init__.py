"""Similar-track search over the feature store: embedding recipes, FAISS indexes, queries, evaluation."""

from mullama.knn.clip_index import ClipIndex, Neighbour
from mullama.knn.recipes import Recipe, parse_recipe

__all__ = ["ClipIndex", "Neighbour", "Recipe", "parse_recipe"]
