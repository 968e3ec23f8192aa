"""Moved to :mod:`minilib.picker` (choosing a model is a technique of chapter 11); this name stays only until the
notebooks import it from there."""
from minilib.picker import *  # noqa: F403
