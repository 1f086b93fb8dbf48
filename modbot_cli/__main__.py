"""``python -m modbot_cli``: the same as the ``modbot-ring`` console script."""

import sys

from modbot_cli.main import main

sys.exit(main())
