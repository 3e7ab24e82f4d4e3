"""Every live :class:`~pgwarden.observe.Tracker` of this process, weakly held.

The pool metrics collector, the holders endpoint and the pytest plugin find the pools here:
pgwarden's own pools and every pool :func:`pgwarden.instrument` instruments register on
creation and disappear when they are garbage-collected or closed (pgwarden's pools unregister
on ``close()``; an instrumented pool is left out once its library says it is closed).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tracker import Tracker

__all__ = ["register", "trackers", "unregister"]

_lock = threading.Lock()
_trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()


def register(tracker: Tracker) -> None:
    """List ``tracker`` (idempotent)."""
    with _lock:
        _trackers.add(tracker)


def unregister(tracker: Tracker) -> None:
    """Stop listing ``tracker`` (its pool was closed or de-instrumented)."""
    with _lock:
        _trackers.discard(tracker)


def trackers() -> list[Tracker]:
    """The live trackers of pools that are not closed, by name."""
    with _lock:
        found = list(_trackers)
    return sorted((t for t in found if not t.pool_closed), key=lambda t: (t.name, t.library))
