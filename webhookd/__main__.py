"""`python -m webhookd`: the same as the `webhookd` command."""

import sys

from webhookd.cli import main

sys.exit(main())
