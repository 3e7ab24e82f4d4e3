"""pgwarden: keep PostgreSQL connections healthy.

The public API is what ``__all__`` lists; everything else is internal and may change.
"""

from __future__ import annotations

from .conninfo import redact, resolve
from .errors import (
    ConfigError,
    ConnectError,
    PgwardenError,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ServerFullError,
    TooManyRequests,
)
from .guard import Guard, PassResult
from .guard import Policy as GuardPolicy
from .integrations import Instrumentation, instrument
from .pool import AsyncConnectionPool, ConnectionPool, Holder, PoolCheckoutTimeout, get_pool

__version__ = "0.1.0"

__all__ = [
    "AsyncConnectionPool",
    "ConfigError",
    "ConnectError",
    "ConnectionPool",
    "Guard",
    "GuardPolicy",
    "Holder",
    "Instrumentation",
    "PassResult",
    "PgwardenError",
    "PoolCheckoutTimeout",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerFullError",
    "TooManyRequests",
    "__version__",
    "get_pool",
    "instrument",
    "redact",
    "resolve",
]
