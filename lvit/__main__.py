"""``python -m lvit``: the ``lvit`` command where the package is on the path but not installed."""

import sys

from lvit.cli import main

sys.exit(main())
