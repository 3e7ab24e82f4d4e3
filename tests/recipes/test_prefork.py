"""Recipe: pools in prefork servers (examples/prefork.py), with a real os.fork()."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import prefork
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.integrations import instrumentation_of
from pgwarden.observe import trackers

from ..integrations.helpers import url

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child; return what it returned (JSON), or fail with its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(r)
            payload = {"ok": fn()}
        except BaseException:
            payload, code = {"error": traceback.format_exc()}, 1
        try:
            os.write(w, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    payload = json.loads(data)
    assert "error" not in payload, payload.get("error")
    assert os.waitstatus_to_exitcode(status) == 0
    return payload["ok"]


def backend_pid(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("select pg_backend_pid()").scalar_one())


def serve_in_the_child(engine: sa.Engine) -> sa.Connection:
    return engine.connect()  # checkout: child


def test_gunicorn_post_fork_leaves_the_parents_pool_alone(pg: EmbeddedPostgres) -> None:
    engine = prefork.create_engine(url(pg, "psycopg"), pool_size=1, max_overflow=0,
                                   pool_timeout=0.3)
    handle = instrumentation_of(engine)
    assert handle is not None
    parent = engine.connect()
    parent_pid = backend_pid(parent)

    def child() -> dict[str, Any]:
        prefork.post_fork(None, None)  # what gunicorn calls in the worker
        held = serve_in_the_child(engine)
        mine = backend_pid(held)
        child_handle = instrumentation_of(engine)
        holders = [(h.pid, h.function) for h in child_handle.holders()] if child_handle else []
        try:
            engine.connect()
        except sa.exc.TimeoutError as e:
            timeout = str(e)
        held.close()
        return {"pid": mine, "holders": holders, "timeout": timeout}

    try:
        seen = in_child(child)
        assert seen["pid"] != parent_pid  # the child opened its own connection
        # the parent's checkout is not the child's holder; the child's new pool is instrumented
        assert seen["holders"] == [[seen["pid"], "serve_in_the_child"]]
        assert f"backend pid {seen['pid']} " in seen["timeout"]
        assert "in serve_in_the_child" in seen["timeout"]
        assert backend_pid(parent) == parent_pid  # the child did not close the parent's socket
        assert [h.pid for h in handle.holders()] == [parent_pid]
    finally:
        parent.close()
        handle.remove()
        engine.dispose()


def test_celery_worker_process_init_creates_the_pool_in_the_child(pg: EmbeddedPostgres) -> None:
    def child() -> dict[str, Any]:
        pool = prefork.init_worker_pool(pg.dsn, min_size=1, max_size=2)
        try:
            with pool.connection() as conn:
                pid = conn.info.backend_pid
                handle = instrumentation_of(pool)
                holders = [h.pid for h in handle.holders()] if handle else []
            return {"pid": pid, "holders": holders,
                    "pools": [t.name for t in trackers() if t.library == "psycopg_pool"]}
        finally:
            pool.close()

    seen = in_child(child)
    assert seen["holders"] == [seen["pid"]] and "celery-worker" in seen["pools"]
    assert "celery-worker" not in [t.name for t in trackers()]  # only in the child
