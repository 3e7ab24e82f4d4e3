"""The pure half of pooler detection: what the observations mean and which of drivers.py's
rules follow. The PgBouncer installed here (1.18) cannot rename prepared statements, so a
PgBouncer that tracks them (1.21+) is tested here through what its probe returns (the
``PGBOUNCER_<n>`` names PgBouncer's docs describe)."""

from __future__ import annotations

import pytest

from pgwarden.errors import ConfigError
from pgwarden.pgbouncer.detect import DIRECT, Pooler, coerce, from_names, from_pids
from pgwarden.pgbouncer.drivers import advice
from pgwarden.pgbouncer.version import Version
from pgwarden.pool import ConnectionPool
from pgwarden.pool._core import pooler_kwargs, restarted_since


def test_a_direct_server_is_recognised_by_its_pid() -> None:
    assert from_pids(4711, 4711) is DIRECT
    assert from_pids(-1468001706, 8317) is None


def test_a_pgbouncer_that_tracks_prepared_statements() -> None:
    seen = from_names(["PGBOUNCER_12"], "psycopg", -5, 8317, pool_mode="transaction")
    assert seen.kind == "pgbouncer" and seen.tracks_prepared is True
    # version unknown: taken as 1.21, which asyncpg works with and psycopg does not
    assert seen.advice("asyncpg").settings == ()
    assert seen.advice("sqlalchemy+asyncpg").settings == ()
    assert seen.advice("psycopg").snippet() == "prepare_threshold=None"
    assert pooler_kwargs(seen, 180000) == {"prepare_threshold": None}


def test_a_pooler_that_passes_names_through() -> None:
    seen = from_names(["_pg3_0"], "psycopg", -5, 8317)
    assert seen.tracks_prepared is False and seen.pool_mode is None
    assert "transaction mode (pool mode not determined)" in seen.describe()
    assert seen.advice("asyncpg").snippet() == "statement_cache_size=0"
    assert from_names(["__asyncpg_stmt_3__"], "asyncpg", -5, 1).tracks_prepared is False


def test_told_versions_follow_drivers_py() -> None:
    told = coerce("1.22.1")
    assert told is not None and told.version == Version(1, 22, 1)
    # 1.22 with max_prepared_statements at its default (0 before 1.24): not tracking
    assert pooler_kwargs(told, 180000) == {"prepare_threshold": None}
    tracking = Pooler("pgbouncer", "transaction", Version(1, 22), 200, True)
    assert pooler_kwargs(tracking, 180000) == {}
    assert pooler_kwargs(tracking, 160004) == {"prepared_max": None}
    assert advice("psycopg", pool_mode="transaction", version=Version(1, 24),
                  libpq_version=150000).snippet() == "prepared_max=None"
    assert pooler_kwargs(coerce(True), 180000) == {"prepare_threshold": None}  # type: ignore[arg-type]
    assert pooler_kwargs(coerce(False), 180000) == {}  # type: ignore[arg-type]
    assert coerce(None) is None
    with pytest.raises(ValueError, match="pgbouncer must be None"):
        coerce("maybe")
    with pytest.raises(ConfigError):
        ConnectionPool("", open=False, pgbouncer=3)


def test_restart_or_terminate_from_the_uptime() -> None:
    assert restarted_since(uptime=0.8, held_for=2.5)  # started after the checkout
    assert not restarted_since(uptime=86400.0, held_for=2.5)  # up for a day: terminated
