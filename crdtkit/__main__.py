"""``python -m crdtkit``: the same as the ``crdtkit`` command."""

import sys

from crdtkit.cli import main

sys.exit(main())
