"""pgwarden.instrument itself: dispatch, lazy imports, argument checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pgwarden
from pgwarden.embedded import EmbeddedPostgres


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
