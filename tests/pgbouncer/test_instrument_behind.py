"""pgwarden.instrument() behind a real PgBouncer in transaction mode: one WARNING naming the
setting to change, when the pool's driver settings break there; none when they fit or the
server is direct."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import pgwarden
from pgwarden.embedded import EmbeddedPostgres

LOGGER = "pgwarden.integrations"


@pytest.fixture
def cluster(make_cluster: Callable[..., EmbeddedPostgres]) -> EmbeddedPostgres:
    return make_cluster(max_connections=20)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


def _asyncpg_kwargs(host: str, port: int, cluster: EmbeddedPostgres) -> dict[str, Any]:
    return {"host": host, "port": port, "user": cluster.user, "password": cluster.password,
            "database": "postgres"}


async def test_asyncpg_statement_cache_behind_pgbouncer_warns_once(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    bouncer = make_bouncer(cluster)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    pool = await asyncpg.create_pool(min_size=0, max_size=3,
                                     **_asyncpg_kwargs(bouncer.host, bouncer.port, cluster))
    try:
        handle = pgwarden.instrument(pool, name="orders")
        for _ in range(3):  # opens connections: the first one is probed
            async with pool.acquire() as con:
                assert await con.fetchval("select 1") == 1
        [warning] = _warnings(caplog)
        assert "pool 'orders' (asyncpg): behind a connection pooler (PgBouncer?)" in warning
        assert "statement_cache_size=100" in warning
        assert "asyncpg.create_pool(..., statement_cache_size=0)" in warning
        assert handle.pooler is not None and handle.pooler.tracks_prepared is False
        handle.remove()
    finally:
        await pool.close()


async def test_asyncpg_without_a_cache_or_direct_is_quiet(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    bouncer = make_bouncer(cluster)
    caplog.set_level(logging.INFO, logger=LOGGER)
    fine = await asyncpg.create_pool(min_size=0, max_size=1, statement_cache_size=0,
                                     **_asyncpg_kwargs(bouncer.host, bouncer.port, cluster))
    direct = await asyncpg.create_pool(min_size=0, max_size=1,
                                       **_asyncpg_kwargs(cluster.host, cluster.port, cluster))
    try:
        h1 = pgwarden.instrument(fine)
        h2 = pgwarden.instrument(direct)
        for pool in (fine, direct):
            async with pool.acquire() as con:
                await con.fetchval("select 1")
        assert _warnings(caplog) == []
        assert h1.pooler is None  # nothing to check: no probe at all
        assert h2.pooler is not None and not h2.pooler.behind
        h1.remove()
        h2.remove()
    finally:
        await fine.close()
        await direct.close()


def test_psycopg_pool_default_prepare_threshold_warns(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    psycopg_pool = pytest.importorskip("psycopg_pool")
    bouncer = make_bouncer(cluster)
    caplog.set_level(logging.INFO, logger=LOGGER)
    pool = psycopg_pool.ConnectionPool(bouncer.conninfo(), min_size=1, max_size=2, open=False,
                                       name="reports")
    handle = pgwarden.instrument(pool)
    try:
        pool.open(wait=True, timeout=10)
        with pool.connection() as conn:
            conn.execute("select 1")
        [warning] = _warnings(caplog)
        assert "pool 'reports' (psycopg_pool): behind a connection pooler" in warning
        assert "prepare_threshold=5" in warning
        assert 'ConnectionPool(..., kwargs={"prepare_threshold": None})' in warning
    finally:
        handle.remove()
        pool.close()


def test_told_pgbouncer_judges_at_instrument_time(caplog: pytest.LogCaptureFixture) -> None:
    psycopg_pool = pytest.importorskip("psycopg_pool")
    caplog.set_level(logging.INFO, logger=LOGGER)
    ok = psycopg_pool.ConnectionPool("", open=False, kwargs={"prepare_threshold": None})
    bad = psycopg_pool.ConnectionPool("", open=False, name="told")
    h1 = pgwarden.instrument(ok, pgbouncer=True)
    h2 = pgwarden.instrument(bad, pgbouncer="1.18.0")
    try:
        [warning] = _warnings(caplog)
        assert "pool 'told' (psycopg_pool): behind PgBouncer 1.18.0 in transaction mode" in warning
        with pytest.raises(ValueError, match="pgbouncer must be"):
            pgwarden.instrument(ok, pgbouncer="maybe")
    finally:
        h1.remove()
        h2.remove()


def test_sqlalchemy_psycopg_behind_pgbouncer_warns(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    bouncer = make_bouncer(cluster)
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = (f"postgresql+psycopg://{cluster.user}:{cluster.password}@{bouncer.host}:"
           f"{bouncer.port}/postgres")
    engine = sqlalchemy.create_engine(url)
    handle = pgwarden.instrument(engine, name="web")
    try:
        with engine.connect() as c:
            assert c.execute(sqlalchemy.text("select 1")).scalar() == 1
        [warning] = _warnings(caplog)
        assert "pool 'web' (sqlalchemy)" in warning
        assert 'create_engine(url, connect_args={"prepare_threshold": None})' in warning
    finally:
        handle.remove()
        engine.dispose()


async def test_sqlalchemy_asyncpg_behind_pgbouncer_names_the_dialects_settings(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("asyncpg")
    sa_asyncio = pytest.importorskip("sqlalchemy.ext.asyncio")
    from sqlalchemy import text

    bouncer = make_bouncer(cluster)
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = (f"postgresql+asyncpg://{cluster.user}:{cluster.password}@{bouncer.host}:"
           f"{bouncer.port}/postgres")
    engine = sa_asyncio.create_async_engine(url)
    handle = pgwarden.instrument(engine, name="api")
    try:
        async with engine.connect() as c:
            assert (await c.execute(text("select 1"))).scalar() == 1
        [warning] = _warnings(caplog)
        for setting in ("statement_cache_size", "prepared_statement_cache_size",
                        "prepared_statement_name_func"):
            assert f'"{setting}": ' in warning
        assert "create_async_engine(url, connect_args=" in warning
    finally:
        handle.remove()
        await engine.dispose()
