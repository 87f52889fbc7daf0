"""``python -m stitch``: the same as the ``stitch`` command."""

import sys

from stitch.cli import main

sys.exit(main())
