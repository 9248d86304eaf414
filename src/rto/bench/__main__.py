"""``python -m rto.bench``: the same as ``rto bench``."""

import sys

from rto.bench import main

sys.exit(main())
