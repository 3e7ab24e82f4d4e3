"""One pool per process: :func:`get_pool`."""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from collections.abc import Mapping
from typing import Any

from ..conninfo import resolve
from ..errors import ConfigError
from ._sync.pool import ConnectionPool

__all__ = ["ENV_MAX_SIZE", "ENV_MIN_SIZE", "ENV_TIMEOUT", "close_all", "get_pool"]

ENV_MIN_SIZE = "PGWARDEN_POOL_MIN_SIZE"
ENV_MAX_SIZE = "PGWARDEN_POOL_MAX_SIZE"
ENV_TIMEOUT = "PGWARDEN_POOL_TIMEOUT"

_lock = threading.Lock()
_pools: dict[tuple[str, str], ConnectionPool[Any]] = {}


def _env_number(env: Mapping[str, str], key: str, kind: type) -> Any:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(
            f"${key}={raw!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value < 0 or (kind is float and value == 0):
        raise ConfigError(f"${key}={raw!r} must be > 0")
    return value


def get_pool(
    dsn: str | None = None,
    *,
    name: str = "default",
    min_size: int | None = None,
    max_size: int | None = None,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
    **options: Any,
) -> ConnectionPool[Any]:
    """Return the process-wide :class:`ConnectionPool` for ``(dsn, name)``, creating and opening
    it on first call (the singleton people write by hand). Thread-safe; closed at interpreter
    exit; after ``fork()`` the same object starts clean in the child.

    Args:
        dsn: URL or conninfo; default ``$DATABASE_URL``, then libpq's environment (PG*).
        name: distinguishes several pools to one database (also the pool's name).
        min_size: default ``$PGWARDEN_POOL_MIN_SIZE``, else 4 (psycopg_pool's default) or
            ``max_size`` if smaller.
        max_size: default ``$PGWARDEN_POOL_MAX_SIZE``, else ``min_size``.
        timeout: checkout timeout in seconds; default ``$PGWARDEN_POOL_TIMEOUT``, else 30.
        environ: environment to read (default ``os.environ``).
        options: further :class:`ConnectionPool` keyword arguments (first call only).

    The first call's configuration wins; later calls with the same ``(dsn, name)`` return the
    same pool whatever they pass (a closed pool is replaced).

    Raises:
        ConfigError: malformed DSN or environment value.
    """
    env = os.environ if environ is None else environ
    conninfo = resolve(dsn, connect_timeout=None, environ=env).conninfo
    key = (conninfo, name)
    with _lock:
        pool = _pools.get(key)
        if pool is not None and not pool.closed:
            return pool
        if min_size is None:
            min_size = _env_number(env, ENV_MIN_SIZE, int)
        if max_size is None:
            max_size = _env_number(env, ENV_MAX_SIZE, int)
        if timeout is None:
            timeout = _env_number(env, ENV_TIMEOUT, float)
        kwargs: dict[str, Any] = dict(options)
        if min_size is None:
            # psycopg_pool's default of 4, but never above an explicit max_size
            min_size = 4 if max_size is None else min(4, max_size)
        kwargs["min_size"] = min_size
        if max_size is not None:
            kwargs["max_size"] = max_size
        if timeout is not None:
            kwargs["timeout"] = timeout
        pool = ConnectionPool(conninfo, name=name, open=True, **kwargs)
        _pools[key] = pool
        return pool


def close_all() -> None:
    """Close every pool :func:`get_pool` made (run at interpreter exit)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with contextlib.suppress(Exception):  # exiting anyway
            pool.close(timeout=1.0)


atexit.register(close_all)
