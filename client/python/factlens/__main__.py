"""``python3 -m factlens``: the command-line client (factlens.cli)."""
import sys

from factlens.cli import main

sys.exit(main())
