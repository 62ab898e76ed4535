"""`python -m pipelines.stack up|down|status|topics` (make up, make down)."""

import sys

from pipelines.stack import main

sys.exit(main())
