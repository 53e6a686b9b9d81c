"""``python -m dimbench``: the same command line as the ``dimbench`` console script."""

import sys

from dimbench.cli import main

sys.exit(main())
