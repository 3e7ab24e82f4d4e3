"""The pytest plugin's leak check, run with pytester on small test files that use real pools
on a real PostgreSQL."""

from __future__ import annotations

import pytest

from pgwarden.embedded import EmbeddedPostgres

pytest_plugins = ["pytester"]
OPTIONS = ("-p", "no:cacheprovider", "-o", "asyncio_default_fixture_loop_scope=function")

LEAKY = '''
import psycopg_pool
import pytest
import sqlalchemy as sa

import pgwarden

URL = {url!r}
DSN = {dsn!r}
engine = sa.create_engine(URL, pool_size=2)
pgwarden.instrument(engine, name="orders-db")
pool = psycopg_pool.ConnectionPool(DSN, min_size=0, max_size=2, name="jobs", open=True)
pgwarden.instrument(pool)
own = pgwarden.ConnectionPool(DSN, min_size=0, max_size=2, name="reports")
kept = []
own_kept = []


def export_orders():
    kept.append(engine.connect())  # the leak


def test_leaks_a_sqlalchemy_connection():
    export_orders()


def test_returns_everything():
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
    with pool.connection() as conn:
        conn.execute("select 1")


@pytest.fixture
def job_conn():
    conn = pool.getconn()
    yield conn
    pool.putconn(conn)


def test_a_fixture_returns_it_at_teardown(job_conn):
    job_conn.execute("select 1")


@pytest.mark.pgwarden_no_leaks
def test_marked_leaks_psycopg_pool():
    kept.append(pool.getconn())


def build_report():
    own_kept.append(own.getconn())  # pgwarden's own pool: no instrument() needed


def test_leaks_a_pgwarden_pool_connection():
    build_report()


@pytest.fixture(scope="session")
def shared_conn():
    # set up during the first test that uses it, given back at the end of the session
    with psycopg_pool.ConnectionPool(DSN, min_size=0, max_size=1, name="shared") as p:
        pgwarden.instrument(p)
        conn = p.getconn()
        yield conn
        p.putconn(conn)


def test_first_user_of_a_session_fixture(shared_conn):
    shared_conn.execute("select 1")


def test_second_user_of_a_session_fixture(shared_conn):
    shared_conn.execute("select 1")


def test_last():
    pass  # the module's teardown runs in this test's teardown: after the leaks were checked


def teardown_module():
    # give everything back before the module goes: nothing is left to the garbage collector
    for conn in kept:
        if isinstance(conn, sa.Connection):
            conn.close()
        else:
            pool.putconn(conn)
    for conn in own_kept:
        own.putconn(conn)
    engine.dispose()
    pool.close()
    own.close()
'''


@pytest.fixture
def leaky(pytester: pytest.Pytester, pg: EmbeddedPostgres) -> pytest.Pytester:
    url = pg.url.replace("postgresql://", "postgresql+psycopg://")
    pytester.makepyfile(test_leaky=LEAKY.format(url=url, dsn=pg.dsn))
    return pytester


def test_flag_fails_the_leaking_tests_naming_pool_location_and_holder(
        leaky: pytest.Pytester) -> None:
    result = leaky.runpytest("--pgwarden-leaks", *OPTIONS)
    result.assert_outcomes(passed=8, errors=3)  # 8 tests: 3 of them leak
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_sqlalchemy_connection*",
        "*test_leaks_a_sqlalchemy_connection ended with 1 connection(s) still checked out:",
        "*pool 'orders-db' (sqlalchemy): backend pid * held * s by MainThread at "
        "test_leaky.py:19 in export_orders (idle)",
        "*ERROR at teardown of test_marked_leaks_psycopg_pool*",
        "*pool 'jobs' (psycopg_pool): backend pid * by MainThread at test_leaky.py:46 in "
        "test_marked_leaks_psycopg_pool (idle)",
        "*ERROR at teardown of test_leaks_a_pgwarden_pool_connection*",
        "*pool 'reports' (pgwarden): backend pid * by MainThread at test_leaky.py:50 in "
        "build_report (idle)",
    ])
    assert "pluggy/" not in out and "_pytest/" not in out  # the stack shown is the test's
    assert "test_returns_everything" not in out.split("short test summary")[1]
    assert "test_a_fixture_returns_it_at_teardown" not in out.split("short test summary")[1]
    assert "session_fixture" not in out.split("short test summary")[1]  # not the test's leak


def test_without_the_flag_only_marked_tests_are_checked(leaky: pytest.Pytester) -> None:
    result = leaky.runpytest(*OPTIONS)
    result.assert_outcomes(passed=8, errors=1)  # a teardown error is counted besides the pass
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_marked_leaks_psycopg_pool*"])
