"""pgwarden's connection pool for psycopg 3: holders, leak detection, restarts without errors.

Public names: :class:`ConnectionPool`, :class:`AsyncConnectionPool` (one source: the thread pool
is generated from the asyncio one), :func:`get_pool`, :class:`Holder`,
:class:`PoolCheckoutTimeout` (the :class:`~pgwarden.errors.PoolTimeout` the pools raise, with
attributes), and :class:`Connection` / :class:`AsyncConnection` with their cursors (the default
connection classes: a first statement killed by a server shutdown is run again, see
:mod:`pgwarden.pool.connection`). See ``docs/pool.md``.
"""

from __future__ import annotations

from ..errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from ..observe import Holder
from ._async.pool import AsyncConnectionPool
from ._core import PoolCheckoutTimeout
from ._sync.pool import ConnectionPool
from .connection import AsyncConnection, AsyncCursor, Connection, Cursor
from .registry import get_pool

__all__ = [
    "AsyncConnection",
    "AsyncConnectionPool",
    "AsyncCursor",
    "Connection",
    "ConnectionPool",
    "Cursor",
    "Holder",
    "PoolCheckoutTimeout",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "get_pool",
]
