"""pgwarden's pools behind a real PgBouncer in transaction mode: they find out by themselves,
turn psycopg's prepared statements off where PgBouncer breaks them, and replay a first
statement killed by a restart of the PostgreSQL behind PgBouncer only when it restarted."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.pgbouncer.detect import Pooler
from pgwarden.pool import AsyncConnectionPool, ConnectionPool

LOGGER = "pgwarden.pool"
QUERY = "select %s::int + 1"


@pytest.fixture
def cluster(make_cluster: Callable[..., EmbeddedPostgres]) -> EmbeddedPostgres:
    return make_cluster(max_connections=20)


def _bouncer(make_bouncer: Callable[..., Any], cluster: EmbeddedPostgres, **settings: Any
             ) -> Any:
    # two server connections for four clients: consecutive transactions of one client land on
    # different server sessions, as they do under load
    return make_bouncer(cluster, settings={"default_pool_size": 2, **settings})


def _hammer(pools: list[Any], rounds: int = 30) -> list[BaseException]:
    """Repeated parameterized queries from 4 threads (psycopg prepares a query after 5)."""
    errors: list[BaseException] = []

    def work(pool: Any) -> None:
        for i in range(rounds):
            try:
                with pool.connection() as conn:
                    assert conn.execute(QUERY, (i,)).fetchone() == (i + 1,)
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in pools for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_sync_pool_detects_pgbouncer_and_serves_prepared_queries(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    bouncer = _bouncer(make_bouncer, cluster)
    caplog.set_level(logging.INFO, logger=LOGGER)
    with ConnectionPool(bouncer.conninfo(), min_size=2, max_size=2, name="behind") as a, \
            ConnectionPool(bouncer.conninfo(), min_size=2, max_size=2, name="behind2") as b:
        a.wait(10)
        b.wait(10)
        assert _hammer([a, b]) == []
        with a.connection() as conn:
            assert conn.prepare_threshold is None
    assert ("pool 'behind': behind a connection pooler (PgBouncer?) in transaction mode, it "
            "does not track prepared statements") in caplog.text
    assert "connections get: prepare_threshold=None" in caplog.text


def test_without_the_setting_the_same_queries_fail(cluster: EmbeddedPostgres,
                                                   make_bouncer: Callable[..., Any]) -> None:
    bouncer = _bouncer(make_bouncer, cluster)
    if bouncer.version.at_least(1, 21):
        pytest.skip("this PgBouncer can track prepared statements")
    # told it is a direct server: psycopg keeps its default prepare_threshold (5)
    with ConnectionPool(bouncer.conninfo(), min_size=2, max_size=2, pgbouncer=False) as a, \
            ConnectionPool(bouncer.conninfo(), min_size=2, max_size=2, pgbouncer=False) as b:
        a.wait(10)
        b.wait(10)
        errors = _hammer([a, b])
    assert errors, "psycopg's prepared statements should break through PgBouncer 1.18"
    assert any("prepared statement" in str(e) for e in errors), errors


async def test_async_pool_detects_pgbouncer(cluster: EmbeddedPostgres,
                                            make_bouncer: Callable[..., Any]) -> None:
    bouncer = _bouncer(make_bouncer, cluster)
    async with AsyncConnectionPool(bouncer.conninfo(), min_size=2, max_size=2) as a, \
            AsyncConnectionPool(bouncer.conninfo(), min_size=2, max_size=2) as b:
        await a.wait(10)
        await b.wait(10)

        async def work(pool: AsyncConnectionPool[Any]) -> None:
            for i in range(30):
                async with pool.connection() as conn:
                    cur = await conn.execute(QUERY, (i,))
                    assert await cur.fetchone() == (i + 1,)

        await asyncio.gather(*(work(p) for p in (a, b, a, b)))
        async with a.connection() as conn:
            assert conn.prepare_threshold is None


@pytest.mark.parametrize("kind", ["sync", "async", "psycopg_pool"])
def test_detection_behind_pgbouncer_reads_tuples_whatever_the_row_factory(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any], kind: str,
        caplog: pytest.LogCaptureFixture) -> None:
    from psycopg.rows import dict_row

    bouncer = _bouncer(make_bouncer, cluster)
    caplog.set_level(logging.INFO)
    kwargs = {"row_factory": dict_row}
    if kind == "sync":
        with ConnectionPool(bouncer.conninfo(), min_size=1, max_size=2, kwargs=kwargs,
                            timeout=10) as pool, pool.connection() as conn:
            assert conn.execute("select 1 as x").fetchone() == {"x": 1}
            assert conn.prepare_threshold is None  # detected
    elif kind == "async":
        async def run() -> None:
            async with AsyncConnectionPool(bouncer.conninfo(), min_size=1, max_size=2,
                                           kwargs=kwargs, timeout=10) as pool, \
                    pool.connection() as conn:
                assert await (await conn.execute("select 1 as x")).fetchone() == {"x": 1}
                assert conn.prepare_threshold is None
        asyncio.run(run())
    else:
        import psycopg_pool

        import pgwarden

        with psycopg_pool.ConnectionPool(bouncer.conninfo(), min_size=0, max_size=2,
                                         kwargs=kwargs, open=True, timeout=10) as pool:
            handle = pgwarden.instrument(pool)
            with pool.connection() as conn:
                assert conn.execute("select 1 as x").fetchone() == {"x": 1}
            assert handle.pooler is not None and handle.pooler.kind != "direct"
            handle.remove()
    assert "KeyError" not in caplog.text and "attempt failed" not in caplog.text


def test_a_direct_server_keeps_prepared_statements(cluster: EmbeddedPostgres) -> None:
    with ConnectionPool(cluster.dsn, min_size=1, max_size=1) as pool, \
            pool.connection() as conn:
        assert conn.prepare_threshold == 5
        for i in range(6):
            conn.execute(QUERY, (i,))
        row = conn.execute("select count(*) from pg_prepared_statements").fetchone()
        assert row == (1,)  # psycopg prepared it: nothing was turned off


def test_told_keeps_the_users_kwargs(cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
                                     caplog: pytest.LogCaptureFixture) -> None:
    bouncer = _bouncer(make_bouncer, cluster)
    with ConnectionPool(bouncer.conninfo(), min_size=1, max_size=1, pgbouncer=True,
                        kwargs={"prepare_threshold": 3}, name="stubborn") as pool, \
            pool.connection() as conn:
        assert conn.prepare_threshold == 3
    assert "its kwargs set prepare_threshold=3" in caplog.text


def test_bad_pgbouncer_argument_is_a_config_error() -> None:
    from pgwarden.errors import ConfigError

    with pytest.raises(ConfigError, match="pgbouncer must be None"):
        ConnectionPool("", open=False, pgbouncer="yes please")
    pool = ConnectionPool("", open=False, pgbouncer=Pooler("pgbouncer", "session"))
    assert pool._core.pooler_kw == {}  # session mode: nothing to change


def _wait_active(cluster: EmbeddedPostgres, n: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = cluster.execute("select count(*) from pg_stat_activity where state = 'active' "
                               "and query like %s", ("%pg_sleep%",))
        if rows[0][0] >= n:
            return
        time.sleep(0.02)
    raise AssertionError("the statements did not start")


@pytest.mark.slow
def test_restart_behind_pgbouncer_replays_first_statements(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    """A restart of PostgreSQL behind PgBouncer: the in-flight statements get PostgreSQL's
    57P01 through PgBouncer, which closes those clients; the other PgBouncer connections of the
    pool stay usable. First statements are run again once PostgreSQL answers through PgBouncer
    (after its server_login_retry); a second statement in a transaction still fails."""
    bouncer = _bouncer(make_bouncer, cluster, server_login_retry=1, default_pool_size=4)
    cluster.execute("create table t (x int)")
    caplog.set_level(logging.INFO, logger=LOGGER)
    results: dict[str, Any] = {}

    with ConnectionPool(bouncer.conninfo(), min_size=4, max_size=4, timeout=20,
                        name="restart") as pool:
        pool.wait(10)

        def run(name: str, fn: Callable[[], Any]) -> None:
            try:
                results[name] = fn()
            except Exception as exc:
                results[name] = exc

        def insert() -> str:
            with pool.connection() as conn:
                conn.execute("insert into t select 1 from pg_sleep(1.5)")
                return "ok"

        def select() -> Any:
            with pool.connection() as conn:
                return conn.execute("select 41 + 1 from pg_sleep(1.5)").fetchone()

        def second() -> None:
            with pool.connection() as conn:
                conn.execute("select 1")
                conn.execute("select pg_sleep(1.5)")

        threads = [threading.Thread(target=run, args=(n, f)) for n, f in
                   (("insert", insert), ("select", select), ("second", second))]
        for t in threads:
            t.start()
        _wait_active(cluster, 3)
        cluster.restart()
        for t in threads:
            t.join(40)
        assert results["insert"] == "ok", results
        assert results["select"] == (42,), results
        assert isinstance(results["second"], psycopg.OperationalError), results
        assert cluster.execute("select count(*) from t")[0] == (1,)
        stats = pool.get_stats()
        assert stats["statements_replayed"] == 2
        assert stats["requests_errors"] == 0
        assert stats["generations_invalidated"] == 0  # PgBouncer's clients survived
        # and every connection of the pool serves again
        conns = [pool.getconn(timeout=10) for _ in range(4)]
        assert all(c.execute("select 1").fetchone() == (1,) for c in conns)
        for c in conns:
            pool.putconn(c)
    assert "PostgreSQL behind the pooler restarted" in caplog.text


@pytest.mark.slow
def test_terminated_session_behind_pgbouncer_is_not_replayed(
        cluster: EmbeddedPostgres, make_bouncer: Callable[..., Any]) -> None:
    """pg_terminate_backend of the server session under a first statement: PostgreSQL did not
    restart, somebody meant to stop that statement: the caller gets the error."""
    bouncer = _bouncer(make_bouncer, cluster)
    with ConnectionPool(bouncer.conninfo(), min_size=1, max_size=2, name="killed") as pool:
        pool.wait(10)
        out: list[Any] = []

        def first() -> None:
            try:
                with pool.connection() as conn:
                    out.append(conn.execute("select pg_sleep(5)").fetchone())
            except Exception as exc:
                out.append(exc)

        t = threading.Thread(target=first)
        t.start()
        _wait_active(cluster, 1)
        cluster.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                        "where query like 'select pg_sleep(5)%' and pid <> pg_backend_pid()")
        t.join(30)
        assert isinstance(out[0], psycopg.errors.AdminShutdown), out
        assert pool.get_stats()["statements_replayed"] == 0
