"""``pgwarden top``: a live view of the server's sessions.

- :mod:`.model` (pure): snapshot + :class:`View` -> :class:`Frame`; sort keys, filters, and
  :func:`may_act` (the guard's protections) — tested without a terminal;
- :mod:`.render`: the usage bar, the table's cells, one frame for ``--once``;
- :mod:`.live`: the connection, snapshots, race-safe cancel / terminate;
- :mod:`.app`: the textual UI (needs the ``top`` extra).

See docs/top.md.
"""

from __future__ import annotations

from .live import Acted, Source
from .model import SORT_KEYS, Frame, Row, View, build_frame, may_act
from .render import render_frame

__all__ = ["SORT_KEYS", "Acted", "Frame", "Row", "Source", "View", "build_frame", "may_act",
           "render_frame"]
