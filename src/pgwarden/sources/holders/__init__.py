"""Applications' holders as a source: the JSON each application serves on ``/holders``
(:func:`pgwarden.metrics.serve_holders`), fetched over HTTP (:mod:`.fetch`) and joined to a
snapshot's sessions by backend pid (:mod:`.join`, pure). ``pgwarden doctor``, ``status`` and
``top`` take ``--holders URL`` and show, next to each backend pid, the pool, the thread or task,
the file:line and function that checked the connection out, and how long it has been held.
"""

from __future__ import annotations

from .fetch import (
    DEFAULT_TIMEOUT,
    PendingFetch,
    fetch,
    fetch_all,
    normalize_url,
    parse_document,
    start_fetch_all,
)
from .join import HeldSession, HolderJoin, join
from .records import FORMAT, AppHolder, HolderSource, fmt_age

__all__ = [
    "DEFAULT_TIMEOUT",
    "FORMAT",
    "AppHolder",
    "HeldSession",
    "HolderJoin",
    "HolderSource",
    "PendingFetch",
    "fetch",
    "fetch_all",
    "fmt_age",
    "join",
    "normalize_url",
    "parse_document",
    "start_fetch_all",
]
