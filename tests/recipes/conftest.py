"""The recipes in examples/ are imported as the documentation shows them."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
for path in (EXAMPLES, EXAMPLES.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
