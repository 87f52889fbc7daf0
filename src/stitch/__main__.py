"""``python -m stitch``: the same as the ``stitch`` command."""

import sys

from stitch.apps.cli import main

sys.exit(main())
