"""``pgwarden pgbouncer init``'s plan: a transaction-mode ``pgbouncer.ini`` sized from a budget,
the auth setup, and what each service's driver needs behind it. Pure: the CLI does the I/O.

Sizes come from :func:`pgwarden.budget.rules.pgbouncer_sizing` (server connections within the
available slots, client connections for every service's pools). Timeouts, each against
PgBouncer's default (pgbouncer(5)):

- ``server_idle_timeout = 60`` (default 600): idle server connections go back to PostgreSQL
  within a minute when load drops, so the slots are there for the direct consumers;
- ``query_wait_timeout = 30`` (default 120): a client that waited 30 s for a server gets an
  error it can act on instead of a hung request (most HTTP timeouts are shorter than 120 s);
- ``server_lifetime = 3600``, ``server_connect_timeout = 15``, ``server_login_retry = 15``:
  PgBouncer's defaults, written out so they can be read;
- ``reserve_pool_timeout = 3`` (default 5): the reserve helps a burst sooner;
- ``max_prepared_statements = 200`` on PgBouncer 1.21+ (the 1.24 default; 0 before), so that
  drivers may keep their prepared statements (:mod:`pgwarden.pgbouncer.drivers`).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..budget.model import Budget, Pool, ServerSlots
from ..budget.rules import PgBouncerSizing, pgbouncer_sizing
from ..errors import ConfigError, ConfigFileError
from .drivers import TRANSACTION_MODE_CAVEATS, DriverAdvice, advice
from .ini import IniValue, UnwritableValue, checked, ini_text, scram_secret
from .version import Version

__all__ = [
    "AUTH_FUNCTION",
    "AUTH_QUERY",
    "AUTH_TYPE_COMMENTS",
    "AUTH_USER",
    "InitPlan",
    "ServiceDrivers",
    "auth_query_sql",
    "driver_of",
    "make_plan",
    "new_password",
]

#: The role PgBouncer runs ``auth_query`` as, and the function it calls (pgbouncer(5)'s
#: "Example of a secure function for auth_query").
AUTH_USER = "pgbouncer_auth"
AUTH_FUNCTION = "pgbouncer.user_lookup"
AUTH_QUERY = f"SELECT uname, phash FROM {AUTH_FUNCTION}($1)"


#: Why each ``auth_type`` (the comment above it in pgbouncer.ini).
AUTH_TYPE_COMMENTS = {
    "scram-sha-256": "clients log in with SCRAM; the same secrets log PgBouncer in to "
                     "PostgreSQL",
    "md5": "the auth file holds md5 hashes (roles whose password PostgreSQL stored as md5); "
           "users with a SCRAM secret still log in with SCRAM. Re-set those passwords with "
           "password_encryption = 'scram-sha-256' and run init again to use scram-sha-256",
}


def driver_of(pool: Pool) -> str:
    """The :data:`pgwarden.pgbouncer.drivers.DRIVERS` name of a budget pool."""
    if pool.kind == "sqlalchemy":
        return f"sqlalchemy+{pool.driver}"
    if pool.kind == "django":
        return f"django+{pool.driver}"
    if pool.kind in ("psycopg_pool", "pgwarden"):
        return "psycopg"
    if pool.kind == "fixed":
        return "any"
    return pool.driver


@dataclass(frozen=True, slots=True)
class ServiceDrivers:
    """What one service's pools need behind this PgBouncer (``direct``: it should not go
    through PgBouncer at all: fixed consumers such as migrations)."""

    service: str
    advice: tuple[DriverAdvice, ...]
    direct: bool = False


@dataclass(frozen=True, slots=True)
class InitPlan:
    """Everything ``pgbouncer init`` writes, except secrets (the CLI fetches or makes them).

    Attributes:
        settings: the ``[pgbouncer]`` section, in order; ``comments`` say why, per key.
        databases: ``[databases]`` entries.
        users: the users the auth file must hold (``auth_type`` file) or that
            ``auth_query`` will look up.
        auth: ``"file"`` or ``"query"``.
        drivers: per service, what its drivers need.
    """

    version: Version
    sizing: PgBouncerSizing
    settings: Mapping[str, IniValue]
    comments: Mapping[str, str]
    databases: Mapping[str, Mapping[str, IniValue]]
    users: tuple[str, ...]
    admin_user: str
    auth: str
    drivers: tuple[ServiceDrivers, ...]
    caveats: tuple[str, ...] = field(default_factory=tuple)

    def with_auth_type(self, auth_type: str) -> InitPlan:
        """This plan with ``auth_type`` ``scram-sha-256`` or ``md5`` (for an auth file holding
        md5 hashes: PgBouncer uses SCRAM with every user whose secret is a SCRAM one)."""
        if auth_type not in AUTH_TYPE_COMMENTS:
            raise ValueError(f"auth_type must be one of {', '.join(AUTH_TYPE_COMMENTS)}")
        return dataclasses.replace(
            self, settings={**self.settings, "auth_type": auth_type},
            comments={**self.comments, "auth_type": AUTH_TYPE_COMMENTS[auth_type]})

    def ini(self) -> str:
        """The ``pgbouncer.ini`` text."""
        header = (f"pgbouncer.ini written by `pgwarden pgbouncer init` for PgBouncer "
                  f"{self.version}, transaction mode.\n"
                  f"Server connections: at most {self.sizing.max_db_connections} per database "
                  f"({self.sizing.server_slots} server slots available after the headroom and "
                  "the direct consumers);\n"
                  f"client connections: the services' pools, {self.sizing.client_connections} "
                  f"in the worst case (max_client_conn {self.sizing.max_client_conn}).")
        return ini_text(self.settings, self.databases, comments=self.comments, header=header)


def make_plan(
    budget: Budget,
    slots: ServerSlots,
    *,
    server_host: str,
    server_port: int,
    default_database: str,
    default_user: str,
    version: Version,
    auth: str = "file",
    auth_file: str = "userlist.txt",
    listen_addr: str = "127.0.0.1",
    listen_port: int = 6432,
    admin_user: str = "pgbouncer_admin",
    direct: int | None = None,
) -> InitPlan:
    """The plan for ``budget`` on a server with ``slots``.

    Args:
        server_host, server_port: where PostgreSQL listens (for ``[databases]``).
        default_database, default_user: for services that name none (the server DSN's).
        version: the PgBouncer it is for (decides ``max_prepared_statements`` and the driver
            settings).
        auth: ``file`` (an auth file with each user's SCRAM secret) or ``query``
            (``auth_user`` + ``auth_query`` through a SECURITY DEFINER function:
            :func:`auth_query_sql`).
        direct: connections that stay direct to PostgreSQL (default: the budget's fixed
            consumers).

    Raises:
        ConfigFileError: a user or database name from the budget file cannot be written into
            PgBouncer's files (names the file and the key).
        ConfigError: an argument that cannot be written (:func:`~pgwarden.pgbouncer.ini.checked`),
            an unknown auth mode, or a port out of range.
    """
    if auth not in ("file", "query"):
        raise ValueError(f"auth must be 'file' or 'query', got {auth!r}")
    if not 1 <= listen_port <= 65535:
        raise ValueError(f"listen_port must be 1-65535, got {listen_port}")
    _check_writable(budget, server_host=server_host, default_database=default_database,
                    default_user=default_user, listen_addr=listen_addr, admin_user=admin_user,
                    auth_file=auth_file)
    if direct is None:
        direct = sum(s.worst_case for s in budget.services if s.fixed)
    sizing = pgbouncer_sizing(budget, slots, direct=direct, default_database=default_database)
    pooled = [s for s in budget.services if not s.fixed]
    users = sorted({s.user or default_user for s in pooled} or {default_user})
    databases: dict[str, dict[str, IniValue]] = {}
    for name, size in sorted(sizing.databases.items()):
        databases[name] = {"host": server_host, "port": server_port, "dbname": name,
                           "pool_size": max(1, size - sizing.reserve_pool_size),
                           "max_db_connections": max(1, size)}
    tracks = version.at_least(1, 21)
    settings: dict[str, IniValue] = {
        "listen_addr": listen_addr,
        "listen_port": listen_port,
        "pool_mode": "transaction",
        "max_client_conn": sizing.max_client_conn,
        "default_pool_size": sizing.default_pool_size,
        "reserve_pool_size": sizing.reserve_pool_size,
        "reserve_pool_timeout": 3,
        "max_db_connections": sizing.max_db_connections,
        "server_idle_timeout": 60,
        "server_lifetime": 3600,
        "server_connect_timeout": 15,
        "server_login_retry": 15,
        "query_wait_timeout": 30,
        "auth_type": "scram-sha-256",
        "auth_file": auth_file,
    }
    comments = {
        "pool_mode": "a server connection is held for one transaction, then shared "
                     "(drivers: see `pgwarden pgbouncer init`'s output)",
        "max_client_conn": f"every service's pools together: {sizing.client_connections} "
                           "in the worst case, plus room for monitoring (at least "
                           "PgBouncer's default, 100)",
        "default_pool_size": "server connections per (database, user) pool, plus "
                             "reserve_pool_size after reserve_pool_timeout seconds",
        "max_db_connections": f"never more server connections per database: "
                              f"{sizing.server_slots} of PostgreSQL's usable slots are left "
                              "after the headroom and the direct consumers",
        "server_idle_timeout": "give idle server connections back within a minute "
                               "(default 600)",
        "query_wait_timeout": "fail a client after 30 s without a server (default 120)",
        "auth_type": AUTH_TYPE_COMMENTS["scram-sha-256"],
    }
    if auth == "query":
        settings["auth_user"] = AUTH_USER
        settings["auth_query"] = AUTH_QUERY
        comments["auth_user"] = (f"looks users up through {AUTH_FUNCTION}() in each database "
                                 "(create it with auth_query.sql)")
    if tracks:
        settings["max_prepared_statements"] = 200
        comments["max_prepared_statements"] = ("track protocol-level prepared statements "
                                               "(PgBouncer 1.21+; the 1.24 default)")
    settings["admin_users"] = admin_user
    settings["stats_users"] = admin_user
    settings["ignore_startup_parameters"] = "extra_float_digits"
    comments["ignore_startup_parameters"] = ("sent by JDBC and some ORMs at startup; "
                                             "PgBouncer refuses unknown ones")
    mps = 200 if tracks else 0
    drivers = []
    for s in budget.services:
        advices = tuple(dict.fromkeys(
            advice(driver_of(p), pool_mode="transaction", version=version,
                   max_prepared_statements=mps) for p in s.pools))
        drivers.append(ServiceDrivers(service=s.name, advice=advices, direct=s.fixed))
    return InitPlan(
        version=version, sizing=sizing, settings=settings, comments=comments,
        databases=databases, users=tuple(users), admin_user=admin_user, auth=auth,
        drivers=tuple(drivers), caveats=TRANSACTION_MODE_CAVEATS)


def _check_writable(budget: Budget, *, server_host: str, default_database: str,
                    default_user: str, listen_addr: str, admin_user: str,
                    auth_file: str) -> None:
    """Every value :func:`make_plan` will write, through the one check the writers make
    (:func:`~pgwarden.pgbouncer.ini.checked`), before anything is written: a budget file's
    value is a ConfigFileError naming the file and key, any other a ConfigError."""
    given: list[tuple[str, str, str]] = [
        (server_host, "the server's host", "text"),
        (default_database, "the --dsn's database", "name"),
        (default_user, "the --dsn's user", "name"),
        (listen_addr, "listen_addr", "addresses"),
        (admin_user, "admin_user", "name"),
        (auth_file, "auth_file", "text"),
    ]
    for value, what, kind in given:
        try:
            checked(value, what=what, kind=kind)
        except UnwritableValue as exc:
            raise ConfigError(str(exc)) from None
    for s in budget.services:
        for opt in ("database", "user"):
            value = getattr(s, opt)
            if value is None:
                continue
            key = f"services.{s.name}.{opt}"
            try:
                checked(value, what=key, kind="name")
            except UnwritableValue as exc:
                raise ConfigFileError(f"{budget.path}: key '{key}': {exc.problem}",
                                      path=budget.path, key=key) from None


def auth_query_sql(password: str, *, salt: bytes | None = None) -> str:
    """The SQL that sets up ``auth_query``: the login role :data:`AUTH_USER` (with a SCRAM
    verifier of ``password``, never the password itself), the schema ``pgbouncer`` and the
    SECURITY DEFINER function PgBouncer calls (pgbouncer(5), "Example of a secure function for
    auth_query"). Run it as a superuser in every database PgBouncer serves: ``auth_query`` runs
    in the client's target database."""
    verifier = scram_secret(password, salt=salt)
    return f"""-- auth_query setup for PgBouncer, written by `pgwarden pgbouncer init --auth query`.
-- Run as a superuser in every database PgBouncer serves (auth_query runs in the target
-- database), e.g. psql -d DBNAME -f auth_query.sql
DO $pgw$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUTH_USER}') THEN
        CREATE ROLE {AUTH_USER} LOGIN;
    END IF;
END
$pgw$;
ALTER ROLE {AUTH_USER} LOGIN PASSWORD '{verifier}';
CREATE SCHEMA IF NOT EXISTS pgbouncer;
CREATE OR REPLACE FUNCTION {AUTH_FUNCTION}(in i_username text, out uname text, out phash text)
RETURNS record AS $pgw$
BEGIN
    SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
    FROM pg_catalog.pg_authid
    WHERE rolname = i_username AND rolcanlogin
    INTO uname, phash;
    RETURN;
END;
$pgw$ LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog;
REVOKE ALL ON FUNCTION {AUTH_FUNCTION}(text) FROM public;
GRANT USAGE ON SCHEMA pgbouncer TO {AUTH_USER};
GRANT EXECUTE ON FUNCTION {AUTH_FUNCTION}(text) TO {AUTH_USER};
"""


def new_password() -> str:
    """A random password for a role pgwarden creates (never printed)."""
    return secrets.token_urlsafe(24)
