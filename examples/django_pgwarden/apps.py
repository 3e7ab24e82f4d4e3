"""Where Django keeps its pool: ``django.db.connections[alias].pool`` (a property of the
PostgreSQL backend's ``DatabaseWrapper``) creates a ``psycopg_pool.ConnectionPool`` on first use
with ``open=False`` and keeps it in the class-level ``DatabaseWrapper._connection_pools``
(one per alias, per process); Django takes connections with ``pool.getconn()`` and gives them
back with ``pool.putconn()`` when the request's connection is closed. Instrumenting the pool
in ``ready()`` needs no other change. Django's frames are left out when locating holders, so
they name the view or task that holds the connection (Django's cursor path is about 15 frames
deep: they are passed over at each checkout, and the default 4 frames of the application
above them are kept).
"""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

import pgwarden


def instrument_django_pools(leak_threshold: float | None = 60.0) -> list[Any]:
    """Instrument the pool of every PostgreSQL database configured with ``"pool"``; return the
    handles (one per alias)."""
    from django.db import connections

    handles = []
    for alias in connections:
        conn = connections[alias]
        pool = getattr(conn, "pool", None)  # None: no "pool" option, or not PostgreSQL
        if pool is not None:
            handles.append(pgwarden.instrument(pool, name=f"django-{alias}",
                                               leak_threshold=leak_threshold,
                                               skip_modules=("django",)))
    return handles


class PgwardenConfig(AppConfig):
    name = "django_pgwarden"

    def ready(self) -> None:
        instrument_django_pools()
