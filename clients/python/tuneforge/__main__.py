"""`python -m tuneforge`: the CLI."""

import sys

from tuneforge.cli import main

sys.exit(main())
