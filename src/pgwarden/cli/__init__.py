"""The ``pgwarden`` command line (click).

One module per command; shared options in :mod:`.options`; output (no wrapping off a terminal,
quiet broken pipes) in :mod:`.output`; one error boundary, :mod:`.boundary`, through which
every command ends with a documented exit code (:data:`EXIT`) and never a traceback.
"""

from __future__ import annotations

from .app import cli, main
from .boundary import EXIT

__all__ = ["EXIT", "cli", "main"]
