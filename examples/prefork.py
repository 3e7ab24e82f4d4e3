"""Pools in prefork servers: gunicorn's ``post_fork`` and Celery's ``worker_process_init``.

A pool must not be shared across ``fork()``: parent and child would talk on the same sockets.
Two ways, both instrumented by pgwarden:

- an engine created at import, in the parent (``app.py`` style): each child disposes of the pool
  it inherited *without closing the parent's connections* (``engine.dispose(close=False)``,
  SQLAlchemy's documented recipe) and gets a new pool; the instrumentation follows the engine to
  its new pool, and the checkouts recorded in the parent are not the child's holders;
- a pool created after the fork, in the child (``worker_process_init``): instrumented there.

gunicorn: in ``gunicorn.conf.py``, ``from examples.prefork import post_fork``.
Celery: ``from celery.signals import worker_process_init`` then
``worker_process_init.connect(init_worker_pool)``.
"""

from __future__ import annotations

from typing import Any

import psycopg_pool
import sqlalchemy

import pgwarden

engine: sqlalchemy.Engine | None = None
worker_pool: psycopg_pool.ConnectionPool[Any] | None = None


def create_engine(url: str, **options: Any) -> sqlalchemy.Engine:
    """In the parent, at import: the application's engine, instrumented."""
    global engine
    engine = sqlalchemy.create_engine(url, **options)
    pgwarden.instrument(engine, name="web")
    return engine


def post_fork(server: Any = None, worker: Any = None) -> None:
    """gunicorn's ``post_fork(server, worker)`` hook: the child drops the inherited pool
    without closing the parent's connections; the next checkout opens its own."""
    if engine is not None:
        engine.dispose(close=False)


def init_worker_pool(conninfo: str, **options: Any) -> psycopg_pool.ConnectionPool[Any]:
    """Celery's ``worker_process_init``: the child's own pool, created and instrumented after
    the fork."""
    global worker_pool
    worker_pool = psycopg_pool.ConnectionPool(conninfo, name="celery-worker", open=True,
                                              **options)
    pgwarden.instrument(worker_pool)
    return worker_pool
