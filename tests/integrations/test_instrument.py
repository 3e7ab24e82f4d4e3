"""pgwarden.instrument itself: dispatch, lazy imports, argument checks."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import pgwarden
from pgwarden.embedded import EmbeddedPostgres

from .helpers import line_of

HERE = __file__


def test_importing_pgwarden_imports_no_pooled_library() -> None:
    code = ("import sys, pgwarden; pgwarden.instrument; "
            "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'psycopg2', 'psycopg_pool') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_target_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"does not know builtins\.dict: it instruments SQLAlchemy"):
        pgwarden.instrument({})


def test_pgwardens_own_pool_is_told_it_is_tracked_already(pg: EmbeddedPostgres) -> None:
    with pgwarden.ConnectionPool(pg.dsn, min_size=0, max_size=1) as pool, pytest.raises(
            TypeError, match=r"pgwarden's own ConnectionPool records its holders already"):
        pgwarden.instrument(pool)


def test_psycopg2s_abstract_pool_is_a_type_error(pg: EmbeddedPostgres) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.AbstractConnectionPool(0, 1, pg.dsn)
    with pytest.raises(TypeError, match=r"AbstractConnectionPool has no getconn\(\)"):
        pgwarden.instrument(pool)
    pool._closeall()


@pytest.mark.parametrize(("skip", "message"), [
    ("django", r"skip_modules must be a tuple of package names"),
    (("no_such_package_here",), r"skip_modules: there is no package 'no_such_package_here'"),
    ((42,), r"skip_modules must be a tuple of package names"),
])
def test_skip_modules_is_validated_before_anything_is_done(
        pg: EmbeddedPostgres, skip: Any, message: str) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.SimpleConnectionPool(0, 1, pg.dsn)
    with pytest.raises(ValueError, match=message):
        pgwarden.instrument(pool, skip_modules=skip)
    assert "getconn" not in vars(pool)  # nothing was half done
    pool.closeall()


def test_leak_threshold_is_validated(pg: EmbeddedPostgres) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.SimpleConnectionPool(0, 1, pg.dsn)
    with pytest.raises(ValueError, match="leak_threshold"):
        pgwarden.instrument(pool, leak_threshold=0)
    assert "getconn" not in vars(pool)  # nothing was half done


def test_without_leak_detection_holders_have_no_location(pg: EmbeddedPostgres) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.SimpleConnectionPool(0, 1, pg.dsn)
    with pgwarden.instrument(pool, name="p2-nostack", leak_threshold=None) as handle:
        conn = pool.getconn()
        [h] = handle.holders()
        assert h.location == "?" and h.pid == conn.get_backend_pid()
        no_location = r"longest holders: backend pid \d+ held [\d.]+ s by MainThread at \? "
        with pytest.raises(psycopg2.pool.PoolError, match=no_location):
            pool.getconn()
        pool.putconn(conn)
    assert "getconn" not in vars(pool)
    pool.closeall()


# -- the checkout stack: the application's frames, the pooled library's passed over -----------

def _inner(pool: Any) -> Any:
    return pool.getconn()  # checkout: inner


def _middle(pool: Any) -> Any:
    return _inner(pool)


def _outer(pool: Any) -> Any:
    return _middle(pool)


def test_stack_depth_counts_application_frames(pg: EmbeddedPostgres) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.SimpleConnectionPool(0, 2, pg.dsn)
    with pgwarden.instrument(pool, name="p2-stack", stack_depth=2) as handle:
        conn = _outer(pool)
        [h] = handle.holders()
        assert [f.name for f in h.stack] == ["_middle", "_inner"]  # outermost first
        assert h.location.endswith(f"test_instrument.py:{line_of(HERE, '# checkout: inner')} "
                                   "in _inner")
        pool.putconn(conn)
    with pgwarden.instrument(pool, name="p2-stack-default") as handle:
        conn = _outer(pool)
        [h] = handle.holders()
        assert [f.name for f in h.stack] == [
            "test_stack_depth_counts_application_frames", "_outer", "_middle", "_inner"]
        pool.putconn(conn)
    pool.closeall()


def test_library_frames_are_passed_over_before_counting(pg: EmbeddedPostgres) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(pg.dsn, min_size=1, max_size=1, name="pp-stack") as pool:
        handle = pgwarden.instrument(pool, stack_depth=1)
        with pool.connection():  # contextlib's and psycopg_pool's frames sit in between
            [h] = handle.holders()
            assert [f.name for f in h.stack] == [
                "test_library_frames_are_passed_over_before_counting"]
        handle.remove()



def test_a_closed_pool_is_no_longer_listed(pg: EmbeddedPostgres) -> None:
    """Its metrics series and its entry in /holders disappear with it (docs/exporter.md)."""
    import asyncio

    import asyncpg
    import psycopg2.pool
    import psycopg_pool

    from pgwarden.observe import trackers

    p2 = psycopg2.pool.ThreadedConnectionPool(0, 1, pg.dsn)
    h2 = pgwarden.instrument(p2)
    pp = psycopg_pool.ConnectionPool(pg.dsn, min_size=0, max_size=1, open=True)
    hp = pgwarden.instrument(pp)
    assert {h2.tracker, hp.tracker} <= set(trackers())
    p2.closeall()
    pp.close()
    assert h2.tracker not in trackers() and hp.tracker not in trackers()

    async def with_asyncpg() -> None:
        pool = await asyncpg.create_pool(pg.url, min_size=0, max_size=1)
        handle = pgwarden.instrument(pool)
        assert handle.tracker in trackers()
        await pool.close()
        assert handle.tracker not in trackers()

    asyncio.run(with_asyncpg())


def test_a_pool_without_sizes_is_counted_quietly(pg: EmbeddedPostgres,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"),
                              poolclass=sa.NullPool)
    handle = pgwarden.instrument(engine)
    caplog.set_level("DEBUG", logger="pgwarden")
    with engine.connect():
        assert handle.tracker.sizes().in_use == 1 and len(handle.holders()) == 1
    assert not [r for r in caplog.records if r.exc_info]  # no traceback logged per read
    handle.remove()
    engine.dispose()


def test_instrumenting_twice_with_other_settings_says_the_first_are_kept(
        pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture) -> None:
    import psycopg2.pool

    pool = psycopg2.pool.SimpleConnectionPool(0, 1, pg.dsn)
    handle = pgwarden.instrument(pool, name="orders")
    caplog.set_level("WARNING", logger="pgwarden.integrations")
    assert pgwarden.instrument(pool) is handle and not caplog.records  # same settings: quiet
    assert pgwarden.instrument(pool, name="billing", leak_threshold=5.0) is handle
    [record] = caplog.records
    assert "pool 'orders' is instrumented already; the first settings are kept: " \
        "name='orders' (asked 'billing'), leak_threshold=60.0 (asked 5.0)" in record.getMessage()
    handle.remove()
    pool.closeall()
