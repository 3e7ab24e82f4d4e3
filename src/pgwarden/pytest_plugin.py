"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures for applications' own test suites:

- ``pgwarden_postgres``: a throwaway PostgreSQL (:class:`pgwarden.embedded.EmbeddedPostgres`)
  for the whole test session, on a free 127.0.0.1 port; ``.dsn`` / ``.url`` to connect.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .embedded import EmbeddedPostgres


@pytest.fixture(scope="session")
def pgwarden_postgres() -> Iterator[EmbeddedPostgres]:
    """A session-wide embedded PostgreSQL cluster, removed at the end of the run."""
    cluster = EmbeddedPostgres()
    try:
        yield cluster
    finally:
        cluster.close()
