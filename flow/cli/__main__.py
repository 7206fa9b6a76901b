"""``python -m flow.cli``: the hetq command line."""
import sys

from flow.cli import main

sys.exit(main())
