"""A cluster for the exporter's tests, with an application role, a pg_monitor role and one
without pg_monitor."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgwarden.embedded import EmbeddedPostgres

from .helpers import add_roles


@pytest.fixture(scope="module")
def mpg() -> Iterator[EmbeddedPostgres]:
    cluster = EmbeddedPostgres(max_connections=40)
    try:
        add_roles(cluster)
        yield cluster
    finally:
        cluster.close()
