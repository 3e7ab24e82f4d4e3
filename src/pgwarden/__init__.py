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

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectError",
    "Guard",
    "GuardPolicy",
    "PassResult",
    "PgwardenError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerFullError",
    "TooManyRequests",
    "__version__",
    "redact",
    "resolve",
]
