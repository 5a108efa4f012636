"""``python -m edgerec`` is the same as the ``edgerec`` command."""

import sys

from .cli import main

sys.exit(main())
