"""``python -m minilib.bench``: the course's command line (headlines and notebook budgets), see :mod:`minilib.experiments.cli`.

An entry point, imported by nothing: the measurement kit in ``minilib/bench/__init__.py`` stays a leaf.
"""
import sys

from minilib.experiments.cli import main

sys.exit(main())
