"""``python -m pipeline.zoo``: the per-architecture worker that ``make zoo`` starts (see ``screen.main``)."""

import sys

from pipeline.zoo.screen import main

sys.exit(main())
