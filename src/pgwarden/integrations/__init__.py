"""``pgwarden.instrument``: holders, leak detection and self-explaining exhaustion for the pools
applications already use, without changing the code that uses them.

==========================================  ===============================================
target                                      module (imported only when such a target comes)
==========================================  ===============================================
SQLAlchemy ``Engine``, ``AsyncEngine``,     :mod:`pgwarden.integrations.sqlalchemy`
``Pool`` (``QueuePool``,
``AsyncAdaptedQueuePool``, ``NullPool``,
``StaticPool``, ...)
psycopg_pool ``ConnectionPool``,            :mod:`pgwarden.integrations.psycopg_pool`
``AsyncConnectionPool``
asyncpg ``Pool``                            :mod:`pgwarden.integrations.asyncpg`
psycopg2 ``SimpleConnectionPool``,          :mod:`pgwarden.integrations.psycopg2`
``ThreadedConnectionPool``
==========================================  ===============================================

The libraries are optional dependencies (extras ``sqlalchemy``, ``psycopg_pool``, ``asyncpg``,
``psycopg2``); importing pgwarden imports none of them. docs/instrument.md lists, per library,
the hooks used, the private APIs touched and the versions tested.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._base import ExplainedError, Instrumentation

__all__ = ["ExplainedError", "Instrumentation", "instrument", "instrumentation_of"]

#: top-level package of the target's class -> adapter module
_ADAPTERS = {
    "sqlalchemy": "sqlalchemy",
    "psycopg_pool": "psycopg_pool",
    "asyncpg": "asyncpg",
    "psycopg2": "psycopg2",
}


def _adapter_for(target: Any) -> Any:
    for cls in type(target).__mro__:
        package = cls.__module__.partition(".")[0]
        if package in _ADAPTERS:
            return importlib.import_module(f"{__name__}.{_ADAPTERS[package]}")
    return None


def _import_skip_modules(names: Any) -> list[Any]:
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError("skip_modules must be a tuple of package names, e.g. "
                         f"skip_modules=(\"django\",), got {names!r}")
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise ValueError(f"skip_modules: there is no package {name!r} to skip (it must be "
                             "importable, e.g. \"django\")") from None
    return modules


def _warn_if_settings_differ(handle: Instrumentation, name: str | None,
                             leak_threshold: float | None, stack_depth: int | None) -> None:
    """Instrumenting twice keeps the first settings: say so when the second call asks for
    others (one warning on the ``pgwarden.integrations`` logger)."""
    tracker = handle.tracker
    asked: dict[str, Any] = {"name": name, "stack_depth": stack_depth}
    if leak_threshold != _DEFAULT_LEAK_THRESHOLD:  # the default cannot tell "not given"
        asked["leak_threshold"] = leak_threshold
    kept = {"name": tracker.name, "leak_threshold": tracker.leak_threshold,
            "stack_depth": handle.stack_depth}
    differ = [f"{k}={kept[k]!r} (asked {v!r})" for k, v in asked.items()
              if (v is not None or k == "leak_threshold") and v != kept[k]]
    if differ:
        from ._base import logger

        logger.warning("pool %r is instrumented already; the first settings are kept: %s. "
                       "Call .remove() on its handle first to change them", tracker.name,
                       ", ".join(differ))


def instrumentation_of(target: Any) -> Instrumentation | None:
    """The active instrumentation of ``target``, or ``None``."""
    adapter = _adapter_for(target)
    return None if adapter is None else adapter.instrumentation_of(target)


_DEFAULT_LEAK_THRESHOLD = 60.0


def instrument(target: Any, *, name: str | None = None,
               leak_threshold: float | None = _DEFAULT_LEAK_THRESHOLD,
               reclaim: bool = True, skip_modules: tuple[str, ...] = (),
               stack_depth: int | None = None, pgbouncer: Any = None) -> Instrumentation:
    """Instrument a pool: record every checkout's holder (thread or task, code location,
    backend pid, transaction state), log checkouts held past ``leak_threshold`` once with their
    stack and "unleaked" when they come back, report connections the application dropped while
    checked out, and make the pool's exhaustion error name its holders.

    Args:
        target: a SQLAlchemy ``Engine`` / ``AsyncEngine`` / ``Pool``, a psycopg_pool
            ``ConnectionPool`` / ``AsyncConnectionPool``, an asyncpg ``Pool`` or a psycopg2
            ``SimpleConnectionPool`` / ``ThreadedConnectionPool``.
        name: the pool's name in logs, errors and metrics (default: psycopg_pool's ``name``;
            SQLAlchemy: ``user@host:port/database`` of the engine's URL, never its password;
            otherwise ``<library>-<n>``).
        leak_threshold: seconds a checkout may be held before it is logged as a leak
            (``None``: no stacks captured, no leak warnings; holders still listed).
        reclaim: give a checkout the application dropped back to its pool where the library
            allows it (asyncpg: ``Pool.release``; psycopg2: ``putconn``). SQLAlchemy returns a
            collected connection itself; psycopg_pool cannot take back a connection object that
            was collected (docs/instrument.md).
        skip_modules: more top-level packages whose frames are not "the holder" (a framework
            between the application and the pool, e.g. ``("django",)``).
        stack_depth: the application's frames kept per checkout, innermost first, counted
            from the first frame outside the pooled library (and ``skip_modules``, pgwarden,
            contextlib and asyncio): default 4. Each frame walked costs a frame object per
            checkout (about 0.2 µs on a 2-core machine; docs/instrument.md, "Cost").

    Returns:
        The :class:`Instrumentation` handle (``holders()``, ``stats()``, ``explain()``,
        ``remove()``). Instrumenting an instrumented target returns its handle unchanged
        (a warning on the ``pgwarden.integrations`` logger names settings asked for that
        differ from the first call's).

    Raises:
        TypeError: ``target`` is none of the above (the message lists what is supported).
        TypeError: ``target`` is one of pgwarden's own pools (they are tracked already).
        ValueError: ``leak_threshold`` is not a positive number or ``None``; ``stack_depth``
            is not a positive integer; ``pgbouncer`` is none of the above; ``skip_modules``
            is not a tuple of importable package names.
    """
    adapter = _adapter_for(target)
    if adapter is None and type(target).__module__.startswith("pgwarden."):
        raise TypeError(
            f"pgwarden.instrument() is for other libraries' pools: pgwarden's own "
            f"{type(target).__qualname__} records its holders already (pool.holders(), "
            "pool.stats(), pgwarden.observe.trackers())")
    if adapter is None:
        raise TypeError(
            f"pgwarden.instrument() does not know {type(target).__module__}."
            f"{type(target).__qualname__}: it instruments SQLAlchemy engines and pools, "
            "psycopg_pool ConnectionPool / AsyncConnectionPool, asyncpg Pool and psycopg2 "
            "SimpleConnectionPool / ThreadedConnectionPool")
    if stack_depth is not None and (isinstance(stack_depth, bool) or not isinstance(
            stack_depth, int) or stack_depth < 1):
        raise ValueError(f"stack_depth must be a positive number of frames, got {stack_depth!r}")
    from ..pgbouncer.detect import coerce

    told = coerce(pgbouncer)
    skipped = _import_skip_modules(skip_modules)
    existing = adapter.instrumentation_of(target)
    if existing is not None:
        _warn_if_settings_differ(existing, name, leak_threshold, stack_depth)
    handle: Instrumentation = adapter.instrument(target, name=name,
                                                 leak_threshold=leak_threshold, reclaim=reclaim)
    from ._base import skip_library

    for module in skipped:  # global: only once every argument was accepted
        skip_library(module)
    if stack_depth is not None:
        handle.stack_depth = stack_depth
    handle._tell_pooler(told)
    return handle
