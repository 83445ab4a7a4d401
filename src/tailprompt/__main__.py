"""`python -m tailprompt` (what `torchrun ... -m tailprompt train ...` starts in each process)."""

import sys

from tailprompt.cli import main

sys.exit(main())
