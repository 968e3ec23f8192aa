"""``python -m minilib.bench``: the command line of the headline comparisons (the kit itself is :mod:`minilib.support.bench`)."""
