"""`python -m eqmlip`: the `eqmlip` command."""

import sys

from .cli import main

sys.exit(main())
