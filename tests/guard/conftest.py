"""Fixtures for the guard's live tests: a cluster of their own with an application role and a
least-privilege guard role (pg_monitor + pg_signal_backend), as docs/guard.md documents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from guard_helpers import add_roles

from pgwarden.embedded import EmbeddedPostgres


@pytest.fixture(scope="module")
def gpg() -> Iterator[EmbeddedPostgres]:
    """A cluster for this module's guard tests (max_connections=40)."""
    cluster = EmbeddedPostgres(max_connections=40)
    try:
        add_roles(cluster)
        yield cluster
    finally:
        cluster.close()
