"""`python -m sla_exporter`: the same as the `sla-exporter` command."""

import sys

from .cli import main

sys.exit(main())
