"""What a budget is made of: pools (one library's pool in one process), services (replicas x
processes, each with its pools), the server's slots. Frozen records, validated eagerly.

A pool's **worst case** is the most connections it opens in one process, by each library's
documented defaults:

=============  ==================================  =======================================
kind           worst case per process               source of the rule and its defaults
=============  ==================================  =======================================
sqlalchemy     ``pool_size + max_overflow`` (5, 10)  SQLAlchemy, ``QueuePool`` / create_engine
asyncpg        ``max_size`` (10)                    asyncpg, ``create_pool(min_size=10,
                                                    max_size=10)``
psycopg_pool   ``max_size`` (= ``min_size``, 4)     psycopg_pool, ``ConnectionPool``
pgwarden       ``max_size`` (= ``min_size``, 4)     pgwarden.ConnectionPool (psycopg_pool's
                                                    parameters)
psycopg2       ``maxconn`` (required)               psycopg2.pool.SimpleConnectionPool
django         ``threads`` (1): one persistent      Django, "Persistent connections"
               connection per thread                (CONN_MAX_AGE)
postgrest      ``db_pool`` (10)                     PostgREST, db-pool / PGRST_DB_POOL
fixed          ``connections`` (required)           cron, migrations, admin sessions, ...
=============  ==================================  =======================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULTS",
    "DRIVERS",
    "KINDS",
    "SHRINKABLE",
    "Budget",
    "Pool",
    "ServerSlots",
    "Service",
    "worst_case",
]

#: Pool kinds and their settings' defaults (``None``: required).
DEFAULTS: Mapping[str, Mapping[str, int | None]] = {
    "sqlalchemy": {"pool_size": 5, "max_overflow": 10},
    "asyncpg": {"min_size": 10, "max_size": 10},
    "psycopg_pool": {"min_size": 4, "max_size": None},
    "pgwarden": {"min_size": 4, "max_size": None},
    "psycopg2": {"minconn": 1, "maxconn": None},
    "django": {"threads": 1},
    "postgrest": {"db_pool": 10},
    "fixed": {"connections": None},
}
KINDS = tuple(DEFAULTS)
#: Kinds whose size pgwarden can suggest changing (a Django process's threads and fixed
#: consumers are what they are).
SHRINKABLE = frozenset({"sqlalchemy", "asyncpg", "psycopg_pool", "pgwarden", "psycopg2",
                        "postgrest"})
#: The driver each kind talks through by default, and the drivers a kind may name. SQLAlchemy's
#: ``postgresql://`` dialect defaults to psycopg2 (SQLAlchemy docs, "Dialects").
DRIVERS: Mapping[str, tuple[str, ...]] = {
    "sqlalchemy": ("psycopg2", "psycopg", "asyncpg"),
    "asyncpg": ("asyncpg",),
    "psycopg_pool": ("psycopg",),
    "pgwarden": ("psycopg",),
    "psycopg2": ("psycopg2",),
    "django": ("psycopg", "psycopg2"),
    "postgrest": ("postgrest",),
    "fixed": ("any",),
}


def worst_case(kind: str, settings: Mapping[str, int]) -> int:
    """The most connections one pool of ``kind`` opens in one process (table above).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "sqlalchemy":
        return settings["pool_size"] + settings["max_overflow"]
    if kind in ("asyncpg", "psycopg_pool", "pgwarden"):
        return settings["max_size"]
    if kind == "psycopg2":
        return settings["maxconn"]
    if kind == "django":
        return settings["threads"]
    if kind == "postgrest":
        return settings["db_pool"]
    if kind == "fixed":
        return settings["connections"]
    raise ValueError(f"unknown pool kind {kind!r}; expected one of {', '.join(KINDS)}")


@dataclass(frozen=True, slots=True)
class Pool:
    """One library's pool in one process.

    Attributes:
        kind: one of :data:`KINDS`.
        settings: the kind's settings with defaults filled in (``pool_size``, ``max_size``...).
        driver: the driver it talks through (``psycopg``, ``asyncpg``, ``psycopg2``, ...).
    """

    kind: str
    settings: Mapping[str, int]
    driver: str

    def __post_init__(self) -> None:
        if self.kind not in DEFAULTS:
            raise ValueError(f"unknown pool kind {self.kind!r}")
        if self.driver not in DRIVERS[self.kind]:
            raise ValueError(f"driver {self.driver!r} is not one of "
                             f"{', '.join(DRIVERS[self.kind])} for kind {self.kind!r}")

    @property
    def worst_case(self) -> int:
        return worst_case(self.kind, self.settings)

    @property
    def shrinkable(self) -> bool:
        return self.kind in SHRINKABLE

    def describe(self) -> str:
        """``sqlalchemy pool_size=10 max_overflow=20``."""
        values = " ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.kind} {values}".strip()


@dataclass(frozen=True, slots=True)
class Service:
    """A deployment: ``replicas`` x ``processes`` processes, each with the same ``pools``.

    Attributes:
        name: the service's name (the budget file's table name).
        replicas: copies of the service (containers, pods, hosts).
        processes: processes per replica (gunicorn/uvicorn workers, Celery prefork children).
        pools: the pools each process holds.
        weight: share when slots must be divided (default: the observed peak, else 1).
        applications: ``application_name`` patterns (fnmatch) of its sessions, to match
            observed sessions; default: the service's name.
        database, user: where it connects (for ``pgwarden pgbouncer init``); ``None``: the
            server DSN's.
    """

    name: str
    pools: tuple[Pool, ...]
    replicas: int = 1
    processes: int = 1
    weight: float | None = None
    applications: tuple[str, ...] = ()
    database: str | None = None
    user: str | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.processes < 1:
            raise ValueError("replicas and processes must be >= 1")
        if not self.pools:
            raise ValueError("a service needs at least one pool")
        if self.weight is not None and not self.weight > 0:
            raise ValueError("weight must be > 0")

    @property
    def copies(self) -> int:
        """Processes over all replicas."""
        return self.replicas * self.processes

    @property
    def per_process(self) -> int:
        """Worst case of one process: the sum of its pools'."""
        return sum(p.worst_case for p in self.pools)

    @property
    def worst_case(self) -> int:
        """replicas x processes x the pools' worst case."""
        return self.copies * self.per_process

    @property
    def fixed(self) -> bool:
        """Nothing in it can be resized (only fixed consumers and Django threads)."""
        return not any(p.shrinkable for p in self.pools)

    @property
    def minimum(self) -> int:
        """The fewest connections it can run with: one per resizable pool per process, the
        whole of the others."""
        return self.copies * sum(1 if p.shrinkable else p.worst_case for p in self.pools)

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.applications or (self.name,)


@dataclass(frozen=True, slots=True)
class ServerSlots:
    """The server's connection slots (PostgreSQL's runtime-config-connection docs).

    Attributes:
        headroom: slots kept free for what no budget lists (psql, monitoring, a deploy's
            overlap); an absolute number of slots.
        source: ``"file"`` or ``"server"`` (read from a live server).
    """

    max_connections: int
    superuser_reserved_connections: int = 3
    reserved_connections: int = 0
    headroom: int = 0
    source: str = "file"

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if min(self.superuser_reserved_connections, self.reserved_connections,
               self.headroom) < 0:
            raise ValueError("reserved connections and headroom must be >= 0")

    @property
    def usable(self) -> int:
        """``max_connections - superuser_reserved_connections - reserved_connections``."""
        return max(0, self.max_connections - self.superuser_reserved_connections
                   - self.reserved_connections)

    @property
    def available(self) -> int:
        """Usable slots minus the headroom: what the services may take."""
        return max(0, self.usable - self.headroom)


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget file read: the services and, when the file gives them, the server's slots.

    Attributes:
        headroom: ``(value, is_fraction)``: slots, or a fraction of the usable slots; turned
            into slots by :func:`pgwarden.budget.rules.slots_for`.
        headroom_set: the file gave the headroom (then it must leave a slot available).
        path: the file it came from (for messages).
    """

    services: tuple[Service, ...]
    max_connections: int | None = None
    superuser_reserved_connections: int = 3
    reserved_connections: int = 0
    headroom: tuple[float, bool] = (0.1, True)
    path: str = ""
    headroom_set: bool = False
