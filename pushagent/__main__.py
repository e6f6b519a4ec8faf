from __future__ import annotations

import sys

from pushagent.cli import main

sys.exit(main())
