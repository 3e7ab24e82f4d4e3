"""What each driver needs behind PgBouncer, per pool mode and PgBouncer version: one pure
module, used by ``pgwarden pgbouncer init`` now and by pgwarden's pools later.

The problem is named prepared statements: they live in one PostgreSQL session, and in
``transaction`` (or ``statement``) mode PgBouncer gives each transaction whichever server
session is free. PgBouncer tracks protocol-level named prepared statements itself from 1.21 on
when ``max_prepared_statements`` > 0 (0 by default in 1.21-1.23, 200 from 1.24; PgBouncer's
config docs, ``max_prepared_statements``); before that, drivers must not use them. ``session``
mode pins one server session per client: no driver needs anything.

Rules, each with its source:

- psycopg 3 prepares a query after ``prepare_threshold`` (5) executions. Behind a PgBouncer
  that does not track prepared statements: ``prepare_threshold=None``. From psycopg 3.2 with
  PgBouncer >= 1.22 and ``max_prepared_statements`` > 0 it works as is, given libpq >= 17 on
  the client (protocol-level Close); with an older libpq, ``prepared_max=None`` (psycopg docs,
  "Using prepared statements with PgBouncer").
- asyncpg caches prepared statements (``statement_cache_size`` 100): ``statement_cache_size=0``
  when PgBouncer does not track them (asyncpg FAQ, "Why am I getting prepared statement
  errors?"); with 1.21+ and tracking on, asyncpg's protocol-level statements work.
- SQLAlchemy's asyncpg dialect prepares every statement under a name from asyncpg's counter and
  caches them per connection: ``connect_args={"statement_cache_size": 0,
  "prepared_statement_cache_size": 0, "prepared_statement_name_func": lambda:
  f"__asyncpg_{uuid4()}__"}`` (SQLAlchemy's asyncpg dialect docs, "Prepared Statement Cache"
  and "Prepared Statement Name with PGBouncer"; they also recommend ``NullPool``, so that
  PgBouncer alone pools, and a ``DISCARD`` when connections are returned).
- SQLAlchemy with psycopg 3: psycopg's rule through ``connect_args``.
- psycopg2 and SQLAlchemy with psycopg2: nothing for plain queries (psycopg2 binds on the
  client and never prepares on the server; SQL-level ``PREPARE`` / ``EXECUTE`` are the
  application's own and do not survive a transaction boundary).
- Django: ``DISABLE_SERVER_SIDE_CURSORS = True`` (Django docs, "Transaction pooling and
  server-side cursors"); with psycopg 3 and ``server_side_binding`` on, psycopg's rule in
  ``OPTIONS``.
- PostgREST: ``db-prepared-statements = false`` / ``PGRST_DB_PREPARED_STATEMENTS=false``
  (PostgREST configuration docs, "db-prepared-statements").

Every client in transaction mode also gives up session state between transactions (PgBouncer's
feature matrix): :data:`TRANSACTION_MODE_CAVEATS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .version import Version

__all__ = [
    "DRIVERS",
    "TRANSACTION_MODE_CAVEATS",
    "DriverAdvice",
    "Setting",
    "advice",
    "tracks_prepared_statements",
]

#: Drivers (and frameworks that configure one) this module knows.
DRIVERS = ("psycopg", "asyncpg", "psycopg2", "sqlalchemy+psycopg", "sqlalchemy+asyncpg",
           "sqlalchemy+psycopg2", "django+psycopg", "django+psycopg2", "postgrest", "any")

#: Session features a client loses in transaction mode (PgBouncer's "SQL feature map for
#: pooling modes"): they hold for one transaction only.
TRANSACTION_MODE_CAVEATS = (
    "SET / RESET of session settings (use SET LOCAL inside the transaction, or ALTER ROLE ... "
    "SET)",
    "LISTEN / NOTIFY listeners, session advisory locks (pg_advisory_lock), temporary tables "
    "that outlive a transaction, WITH HOLD cursors",
    "SQL-level PREPARE / EXECUTE / DEALLOCATE",
    "run migrations and admin sessions directly against PostgreSQL (or through a session-mode "
    "pool), not through transaction mode",
)

_SRC = {
    "psycopg": "https://www.psycopg.org/psycopg3/docs/advanced/prepare.html",
    "asyncpg": "https://magicstack.github.io/asyncpg/current/faq.html",
    "sqlalchemy+asyncpg": "https://docs.sqlalchemy.org/en/20/dialects/postgresql.html"
                          "#prepared-statement-cache",
    "django": "https://docs.djangoproject.com/en/stable/ref/databases/"
              "#transaction-pooling-server-side-cursors",
    "postgrest": "https://docs.postgrest.org/en/stable/references/configuration.html"
                 "#db-prepared-statements",
    "pgbouncer": "https://www.pgbouncer.org/config.html#max_prepared_statements",
}


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting a driver needs.

    Attributes:
        name: the parameter (``prepare_threshold``, ``statement_cache_size``, ...).
        value: its value as Python (or config) source text (``None``, ``0``, ``false``).
        where: where it goes (``psycopg.connect() / pool kwargs``, ``create_async_engine(
            connect_args=...)``, ``environment``, ...).
    """

    name: str
    value: str
    where: str


@dataclass(frozen=True, slots=True)
class DriverAdvice:
    """What one driver needs behind a given PgBouncer.

    Attributes:
        driver: one of :data:`DRIVERS`.
        settings: what to set (empty: nothing).
        notes: conditions and further advice, one line each.
        prepared_statements: whether the driver may keep using server-side prepared
            statements with these settings.
        source: the documentation the rule comes from.
    """

    driver: str
    settings: tuple[Setting, ...]
    notes: tuple[str, ...]
    prepared_statements: bool
    source: str

    def snippet(self) -> str:
        """The settings as one line a user can paste (``prepare_threshold=None``)."""
        if not self.settings:
            return "nothing to set"
        return ", ".join(f"{s.name}={s.value}" for s in self.settings)


def tracks_prepared_statements(version: Version, max_prepared_statements: int | None) -> bool:
    """Whether this PgBouncer keeps protocol-level named prepared statements working in
    transaction mode: 1.21+ with ``max_prepared_statements`` > 0 (``None``: the version's
    default, 0 before 1.24 and 200 from 1.24)."""
    if not version.at_least(1, 21):
        return False
    if max_prepared_statements is None:
        return version.at_least(1, 24)
    return max_prepared_statements > 0


def advice(driver: str, *, pool_mode: str, version: Version,
           max_prepared_statements: int | None = None,
           libpq_version: int | None = None) -> DriverAdvice:
    """What ``driver`` needs behind a PgBouncer of ``version`` in ``pool_mode``.

    Args:
        driver: one of :data:`DRIVERS`.
        pool_mode: ``session``, ``transaction`` or ``statement``.
        version: the PgBouncer version.
        max_prepared_statements: its setting (``None``: the version's default).
        libpq_version: the client's libpq (``psycopg.pq.version()``, e.g. ``170002``), for
            psycopg's rule on a PgBouncer that tracks prepared statements: before libpq 17
            psycopg deallocates with SQL ``DEALLOCATE name``, which PgBouncer does not
            support, so ``prepared_max=None`` (never deallocate) is added. ``None``: unknown
            (the advice then says it in a note).

    Raises:
        ValueError: an unknown driver or pool mode.
    """
    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}; expected one of {', '.join(DRIVERS)}")
    if pool_mode not in ("session", "transaction", "statement"):
        raise ValueError(f"unknown pool_mode {pool_mode!r}")
    if pool_mode == "session":
        return DriverAdvice(driver, (), ("session mode pins one server session per client: "
                                         "nothing to change",), True, _SRC["pgbouncer"])
    tracked = tracks_prepared_statements(version, max_prepared_statements)
    psycopg_ok = tracked and version.at_least(1, 22)
    name = f"{driver}"
    old_libpq = libpq_version is not None and libpq_version < 170000
    if driver == "psycopg":
        if psycopg_ok and old_libpq:
            return DriverAdvice(name, (Setting("prepared_max", "None",
                                               "psycopg.connect() / the pool's kwargs"),), (
                f"libpq {libpq_version} deallocates with SQL DEALLOCATE, which PgBouncer does "
                "not support: prepared_max=None keeps every statement (PgBouncer's "
                "max_prepared_statements bounds the server side)",), True, _SRC["psycopg"])
        if psycopg_ok:
            return DriverAdvice(name, (), (
                "psycopg >= 3.2 with libpq >= 17 keeps its prepared statements (PgBouncer "
                ">= 1.22 tracks them); with an older libpq set prepared_max=None",),
                True, _SRC["psycopg"])
        return DriverAdvice(name, (Setting("prepare_threshold", "None",
                                           "psycopg.connect() / the pool's kwargs"),),
                            (_why(version, tracked, 22),), False, _SRC["psycopg"])
    if driver == "asyncpg":
        if tracked:
            return DriverAdvice(name, (), ("PgBouncer tracks asyncpg's protocol-level "
                                           "prepared statements",), True, _SRC["asyncpg"])
        return DriverAdvice(name, (Setting("statement_cache_size", "0",
                                           "asyncpg.connect() / asyncpg.create_pool()"),),
                            (_why(version, tracked, 21),
                             "and never call Connection.prepare() yourself"),
                            False, _SRC["asyncpg"])
    if driver == "sqlalchemy+asyncpg":
        if tracked:
            return DriverAdvice(name, (), ("PgBouncer tracks the dialect's prepared "
                                           "statements",), True, _SRC["sqlalchemy+asyncpg"])
        where = "create_async_engine(connect_args={...})"
        return DriverAdvice(name, (
            Setting("statement_cache_size", "0", where),
            Setting("prepared_statement_cache_size", "0", where),
            Setting("prepared_statement_name_func", 'lambda: f"__asyncpg_{uuid4()}__"', where),
        ), (_why(version, tracked, 21),
            "SQLAlchemy's docs also recommend poolclass=NullPool behind PgBouncer (PgBouncer "
            "pools; the unique names above keep two clients' statements apart)"),
            False, _SRC["sqlalchemy+asyncpg"])
    if driver == "sqlalchemy+psycopg":
        if psycopg_ok:
            return DriverAdvice(name, (), ("as psycopg: nothing with libpq >= 17",), True,
                                _SRC["psycopg"])
        return DriverAdvice(name, (Setting("prepare_threshold", "None",
                                           "create_engine(connect_args={...})"),),
                            (_why(version, tracked, 22),), False, _SRC["psycopg"])
    if driver in ("psycopg2", "sqlalchemy+psycopg2", "django+psycopg2"):
        settings: tuple[Setting, ...] = ()
        if driver == "django+psycopg2":
            settings = (Setting("DISABLE_SERVER_SIDE_CURSORS", "True",
                                "settings.DATABASES[...]"),)
        return DriverAdvice(name, settings, (
            "psycopg2 binds parameters on the client and never prepares on the server: "
            "nothing to change for plain queries",), False,
            _SRC["django"] if driver.startswith("django") else _SRC["pgbouncer"])
    if driver == "django+psycopg":
        django_settings = [Setting("DISABLE_SERVER_SIDE_CURSORS", "True",
                                   "settings.DATABASES[...]")]
        notes = ["Django uses psycopg's client-side binding cursors by default"]
        if not psycopg_ok:
            django_settings.append(Setting("prepare_threshold", "None",
                                           "settings.DATABASES[...]['OPTIONS']"))
            notes.append("prepare_threshold=None matters with OPTIONS server_side_binding="
                         "True; " + _why(version, tracked, 22))
        return DriverAdvice(name, tuple(django_settings), tuple(notes), psycopg_ok,
                            _SRC["django"])
    if driver == "postgrest":
        if tracked:
            return DriverAdvice(name, (), ("PgBouncer tracks PostgREST's prepared "
                                           "statements",), True, _SRC["postgrest"])
        return DriverAdvice(name, (Setting("db-prepared-statements", "false",
                                           "postgrest.conf, or PGRST_DB_PREPARED_STATEMENTS="
                                           "false"),),
                            (_why(version, tracked, 21),), False, _SRC["postgrest"])
    return DriverAdvice(name, (), ("fixed consumers (migrations, admin sessions, cron) "
                                   "should connect to PostgreSQL directly",), True,
                        _SRC["pgbouncer"])


def _why(version: Version, tracked: bool, needs_minor: int) -> str:
    if not version.at_least(1, 21):
        return (f"PgBouncer {version} does not track prepared statements (1.21 and later "
                "can, with max_prepared_statements > 0)")
    if not tracked:
        return f"max_prepared_statements is 0 on PgBouncer {version}: it does not track them"
    return (f"PgBouncer {version} tracks prepared statements, but this driver needs 1."
            f"{needs_minor} or later for it")
