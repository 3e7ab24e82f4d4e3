"""Shared by the integration tests: line numbers, the server's view of the pids (polling:
:mod:`tests.helpers`)."""

from __future__ import annotations

from pathlib import Path

from pgwarden.embedded import EmbeddedPostgres


def line_of(path: str, marker: str) -> int:
    """The line number of the line of ``path`` that carries ``marker`` (a comment)."""
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if marker in line and "line_of(" not in line:
            return n
    raise AssertionError(f"{marker!r} not in {path}")


def server_pids(pg: EmbeddedPostgres) -> set[int]:
    """Client backends the server has now."""
    rows = pg.execute("select pid from pg_stat_activity where backend_type = 'client backend'")
    return {int(r[0]) for r in rows}


def url(pg: EmbeddedPostgres, driver: str) -> str:
    """A SQLAlchemy URL for ``pg`` with ``driver`` (psycopg, psycopg2, asyncpg)."""
    return pg.url.replace("postgresql://", f"postgresql+{driver}://")
