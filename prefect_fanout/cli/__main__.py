"""``python -m prefect_fanout.cli``: the ``fanout`` command line."""

import sys

from prefect_fanout.cli import main

sys.exit(main())
