"""``python -m nncore``: the same as the ``nncore`` console script."""
import sys

from nncore.cli import main

sys.exit(main())
