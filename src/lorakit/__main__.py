"""`python -m lorakit ...` (also what `torchrun -m lorakit train ...` runs)."""

import sys

from lorakit.cli.main import main

sys.exit(main())
