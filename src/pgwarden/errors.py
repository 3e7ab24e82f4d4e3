"""pgwarden's one error tree.

::

    PgwardenError
    ├── ConfigError (also ValueError)        bad DSN or option                  CLI exit 64
    │   └── ConfigFileError                   bad config file (names file, key)  CLI exit 78
    ├── EmbeddedError                         the throwaway cluster failed
    ├── ConnectError (also psycopg.OperationalError)  could not connect          CLI exit 3
    │   └── ServerFullError                   SQLSTATE 53300, too many clients
    ├── PermissionMissing                     the role lacks a needed privilege   CLI exit 4
    ├── AuditError (also OSError)              the guard's audit log cannot be written CLI exit 74
    ├── ListenError (also OSError)             a metrics endpoint cannot be bound  CLI exit 74
    └── PoolError (also psycopg.OperationalError)
        ├── PoolTimeout                       no connection within ``timeout``
        ├── PoolClosed                        the pool is closed
        └── TooManyRequests                   more than ``max_waiting`` callers waiting

Errors that stand for a database condition subclass ``psycopg.OperationalError``, as
psycopg_pool's do, so ``except psycopg.OperationalError`` keeps working for callers.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = [
    "AuditError",
    "ConfigError",
    "ConfigFileError",
    "ConnectError",
    "EmbeddedError",
    "ListenError",
    "PermissionMissing",
    "PgwardenError",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerFullError",
    "TooManyRequests",
]


class PgwardenError(Exception):
    """Base of every error pgwarden raises.

    Every one of them pickles with its message and attributes (multiprocessing,
    ``ProcessPoolExecutor``, Celery hand exceptions across processes as pickles), although
    most take keyword-only arguments, which :class:`BaseException`'s default reduction cannot
    pass back to ``__init__``.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException reduces to (cls, args, state) and unpickling calls cls(*args); rebuild
        # without __init__ instead, then restore the state (psycopg.Error's reduction puts its
        # diagnostics there).
        reduced = super().__reduce__()
        state = reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 else None
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[PgwardenError], args: tuple[Any, ...],
             state: dict[str, Any] | None) -> PgwardenError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__setstate__(state)
    return exc


class ConfigError(PgwardenError, ValueError):
    """Invalid input: a malformed DSN, an option out of range, a bad config file key.

    The message names the input (file, key, option) and what is allowed.
    """


class ConfigFileError(ConfigError):
    """A configuration file is unreadable, not valid TOML, or has a bad key or value.

    Attributes:
        path: the file.
        key: the dotted key at fault (``rules.idle.max_idle``), or ``None`` for the whole file.
    """

    def __init__(self, message: str, *, path: str, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class EmbeddedError(PgwardenError):
    """The embedded PostgreSQL cluster could not be set up, started or stopped."""


class ConnectError(PgwardenError, psycopg.OperationalError):
    """pgwarden could not connect.

    Attributes:
        target: the redacted DSN it tried (never contains a password).
        server_said: what the server or libpq said (``FATAL: password authentication
            failed for user "app"``), without the target.
        diagnosis_id: id of the matching :mod:`pgwarden.diagnose` entry, or ``None``.
        sqlstate: the SQLSTATE where the server sent one (or it is known from the message).
        kind: what the failure means (:data:`pgwarden.diagnose.KINDS`): ``unreachable``,
            ``going_down``, ``server_full``, ``rejected``, ...
    """

    def __init__(
        self,
        message: str,
        *,
        target: str = "",
        server_said: str = "",
        diagnosis_id: str | None = None,
        sqlstate: str | None = None,
        kind: str = "unreachable",
    ) -> None:
        self._sqlstate = sqlstate  # before psycopg.Error.__init__, which reads .sqlstate
        super().__init__(message)
        self.kind = kind
        self.target = target
        self.server_said = server_said
        self.diagnosis_id = diagnosis_id

    @property
    def sqlstate(self) -> str | None:  # type: ignore[override]
        return self._sqlstate


class ServerFullError(ConnectError):
    """The server refused the connection with SQLSTATE 53300 (too many clients already)."""


class PermissionMissing(PgwardenError):
    """The connected role lacks a privilege the operation needs (the message names it)."""


class AuditError(PgwardenError, OSError):
    """An audit destination of the guard cannot be opened or written (a missing directory, a
    closed pipe, a full disk). The guard stops rather than act without an audit record.

    Attributes:
        destination: the path, or ``-`` for stdout.
    """

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


class ListenError(PgwardenError, OSError):
    """A metrics endpoint cannot listen on its address (the port is in use, the address is
    not on this host, a privileged port).

    Attributes:
        address: ``HOST:PORT``.
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class PoolError(PgwardenError, psycopg.OperationalError):
    """Base of the pool's errors (psycopg_pool's ``PoolTimeout`` etc. are OperationalErrors)."""


class PoolTimeout(PoolError):
    """No connection could be checked out within ``timeout`` seconds."""


class PoolClosed(PoolError):
    """The pool is closed (or was never opened)."""


class TooManyRequests(PoolError):
    """More than ``max_waiting`` callers are already waiting for a connection."""
