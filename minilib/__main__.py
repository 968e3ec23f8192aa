"""``python -m minilib <command>``: the course's one entrance (see :mod:`minilib.cli`)."""
import sys

from minilib.cli import main

sys.exit(main())
