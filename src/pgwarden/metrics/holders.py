"""An application's holders as JSON: who has each pool connection checked out, in every pool
of the process (pgwarden's pools and every instrumented pool: :func:`pgwarden.observe.trackers`).

Off unless the application asks for it (:func:`serve_holders`, or
``serve_pool_metrics(..., holders=True)`` next to ``/metrics``); loopback by default. Code
locations only: what :meth:`pgwarden.observe.Holder.as_dict` gives (file, line, function,
thread or task, backend pid, times, transaction state), never a query, a parameter or a
connection string. ``pgwarden doctor | status | top --holders URL`` read it and join each
holder to its server session by backend pid.

Standard library only: serving holders needs no prometheus_client.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..observe import trackers
from ..sources.holders.records import FORMAT
from .endpoint import Endpoint, json_app

__all__ = ["FORMAT", "HOLDERS_PATH", "holders_document", "serve_holders"]

#: Where the document is served.
HOLDERS_PATH = "/holders"


def holders_document() -> dict[str, Any]:
    """Every live tracker's holders, now::

        {"format": "pgwarden-holders/1", "process_pid": 4242, "taken_at": 1700000000.123,
         "pools": [{"pool": "api", "library": "pgwarden", "connections": 10, "in_use": 2,
                    "max_size": 10, "holders": [Holder.as_dict(), ...]}]}

    ``process_pid`` is the application's process; each holder's ``pid`` is the backend pid of
    its connection (``pg_stat_activity.pid``). ``taken_at`` is Unix seconds; ``held_seconds``
    are seconds (floats) at that instant. Each tracker is read under :attr:`Tracker.lock`
    (the lock its pool takes for its own changes), so a holder is never half updated.
    """
    pools = []
    for tracker in trackers():
        with tracker.lock:
            holders = tracker.holders()
            sizes = tracker.sizes()
        pools.append({
            "pool": tracker.name,
            "library": tracker.library,
            "connections": sizes.open,
            "in_use": sizes.in_use,
            "max_size": sizes.max_size,
            "holders": [h.as_dict() for h in holders],
        })
    return {"format": FORMAT, "process_pid": os.getpid(), "taken_at": round(time.time(), 3),
            "pools": pools}


def serve_holders(port: int, *, addr: str = "127.0.0.1") -> Endpoint:
    """Serve :func:`holders_document` as JSON on ``http://ADDR:PORT/holders`` from a daemon
    thread (``GET``; 404 elsewhere). Returns the :class:`~pgwarden.metrics.endpoint.Endpoint`
    (``.port``, ``.url()``, ``.close()``; a context manager).

    In a process per worker (gunicorn, Celery prefork) every worker serves its own: give each
    a port of its own (or 0 and publish ``.port``), and pass one ``--holders`` per worker.

    Args:
        port: 0 to 65535 (0: a free port).
        addr: where to bind; loopback by default (another address logs a warning: anyone who
            can reach it can read the code locations).

    Raises:
        ConfigError: a port that is not a whole number from 0 to 65535; an empty ``addr``.
        ListenError: the address cannot be bound (port in use, no such address).
    """
    return Endpoint({HOLDERS_PATH: json_app(holders_document)}, port=port, addr=addr,
                    what="holders")
