"""`python -m fastis` runs the `fastis` command."""

import sys

from fastis.cli import main

sys.exit(main())
