"""Recipe: Django 5.1+ with its psycopg pool option (examples/django_pgwarden/), on a real
PostgreSQL. Django's settings can be configured once per process: this module does it."""

from __future__ import annotations

import threading

import pytest

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations import instrumentation_of
from pgwarden.integrations.psycopg_pool import ExplainedPoolTimeout

from ..integrations.helpers import server_pids

django = pytest.importorskip("django")


def configure(pg: EmbeddedPostgres) -> None:
    from django.conf import settings

    if settings.configured:
        return
    settings.configure(
        INSTALLED_APPS=["django_pgwarden"],
        USE_TZ=True,
        DATABASES={"default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres", "USER": pg.user, "PASSWORD": pg.password,
            "HOST": pg.host, "PORT": str(pg.port),
            "OPTIONS": {"pool": {"min_size": 0, "max_size": 1, "timeout": 0.3}},
        }},
    )
    django.setup()  # runs PgwardenConfig.ready(): the pool is instrumented


def view() -> int:
    from django.db import connection

    with connection.cursor() as cursor:  # checkout: django
        cursor.execute("select pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_the_pool_django_creates_is_instrumented(pg: EmbeddedPostgres) -> None:
    configure(pg)
    from django.db import OperationalError, connection

    handle = instrumentation_of(connection.pool)
    assert handle is not None and handle.name == "django-default"
    pid = view()
    [h] = handle.holders()  # Django keeps it until the request's connection is closed
    assert h.pid == pid and pid in server_pids(pg)
    assert h.function == "view" and h.file.endswith("test_django.py")  # Django's frames skipped
    connection.close()  # what Django does at the end of a request: putconn
    assert handle.holders() == []

    # another thread holds the pool's only connection: this one times out
    holding, release = threading.Event(), threading.Event()

    def worker() -> None:
        view()
        holding.set()
        release.wait(10)
        connection.close()

    t = threading.Thread(target=worker, name="report-worker")
    t.start()
    try:
        assert holding.wait(10)
        with pytest.raises(OperationalError) as caught:  # Django wraps the pool's error
            view()
        cause = caught.value.__cause__
        assert isinstance(cause, ExplainedPoolTimeout)
        assert "by report-worker at" in str(caught.value) and "in view" in str(caught.value)
    finally:
        release.set()
        t.join(10)
        connection.close()
    assert handle.holders() == []
