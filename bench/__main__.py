"""``python -m bench`` is ``vae-bench``."""

import sys

from .cli import main

sys.exit(main())
