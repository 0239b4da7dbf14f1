"""`python -m resnetlab ...` is the same as the `resnetlab` command."""

import sys

from .cli import main

sys.exit(main())
