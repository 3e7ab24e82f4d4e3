"""pgwarden's connection pool for psycopg 3: holders, leak detection, restarts without errors.

Public names: :class:`ConnectionPool`, :class:`AsyncConnectionPool`, :func:`get_pool`,
:class:`Holder`, :class:`PoolCheckoutTimeout` (the :class:`~pgwarden.errors.PoolTimeout` the
pools raise, with attributes). See ``docs/pool.md``.
"""

from __future__ import annotations

from ..errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from ._core import PoolCheckoutTimeout
from .aio import AsyncConnectionPool
from .holders import Holder
from .registry import get_pool
from .sync import ConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "ConnectionPool",
    "Holder",
    "PoolCheckoutTimeout",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "get_pool",
]
