from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from pgwarden.embedded import EmbeddedPostgres


def test_cluster_runs_unprivileged_and_restarts_on_same_port(
    make_cluster: Callable[..., EmbeddedPostgres],
) -> None:
    pg = make_cluster(max_connections=15, settings={"idle_session_timeout": "7s"})
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(
            "select current_setting('max_connections'), current_setting('idle_session_timeout'),"
            " inet_server_addr()::text"
        ).fetchone()
    assert row == ("15", "7s", "127.0.0.1/32")
    postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{postmaster}").st_uid != 0 or os.geteuid() != 0
    port = pg.port
    pg.restart()
    assert pg.port == port
    assert pg.execute("select 1") == [(1,)]
    pg.stop()
    assert not pg.running
    pg.start()
    assert pg.execute("select 2") == [(2,)]


def test_close_removes_everything(make_cluster: Callable[..., EmbeddedPostgres]) -> None:
    pg = make_cluster()
    base = pg.base_dir
    pg.close()
    assert not base.exists()
    pg.close()  # idempotent


def test_crashed_owner_is_cleaned_up_by_reaper(tmp_path: Path) -> None:
    """A test run killed with SIGKILL leaves no server and no files behind."""
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from pgwarden.embedded import EmbeddedPostgres
        pg = EmbeddedPostgres(max_connections=10)
        print(pg.base_dir, pg.port, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    base, port = proc.stdout.readline().split()
    assert Path(base).exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while Path(base).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(base).exists()
    try:
        psycopg.connect(f"host=127.0.0.1 port={port} connect_timeout=2 user=x", autocommit=True)
        raise AssertionError("the server is still accepting connections")
    except psycopg.OperationalError:
        pass
