"""``python -m facekd`` is the same as the ``facekd`` command."""
import sys

from facekd.cli import main

sys.exit(main())
