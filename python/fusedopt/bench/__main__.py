"""``python -m fusedopt.bench``: see :mod:`fusedopt.bench`."""

import sys

from .cli import main

sys.exit(main())
