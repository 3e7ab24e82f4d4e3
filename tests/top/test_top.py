"""``pgwarden top`` on a real cluster: the pure frame model (sort, filters, protections), the
textual UI driven headless (sort, filter, terminate after confirmation, a protected session
refused) and ``--once``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgwarden.conninfo import resolve
from pgwarden.embedded import EmbeddedPostgres
from pgwarden.guard.policy import Protection
from pgwarden.top import SORT_KEYS, Source, View, build_frame, may_act
from pgwarden.top.app import Confirm, TopApp

from ..conftest import Sessions

pytestmark = pytest.mark.timeout(120)

APP = {"user": "app", "password": "app-pw"}


@pytest.fixture(scope="module")
def tpg() -> Iterator[EmbeddedPostgres]:
    cluster = EmbeddedPostgres(max_connections=30)
    try:
        cluster.execute("create role app login password 'app-pw'")
        cluster.execute("create role watcher login password 'watcher-pw'")
        yield cluster
    finally:
        cluster.close()


def source(cluster: EmbeddedPostgres, **params: str) -> Source:
    return Source(resolve(cluster.conninfo(**params), command="top"))


def alive(cluster: EmbeddedPostgres, pid: int) -> bool:
    return bool(cluster.execute("select 1 from pg_stat_activity where pid = %s", (pid,)))


def wait_gone(cluster: EmbeddedPostgres, pid: int) -> None:
    deadline = time.monotonic() + 20
    while alive(cluster, pid):
        assert time.monotonic() < deadline, f"pid {pid} is still there"
        time.sleep(0.05)


def test_frame_sorts_filters_and_hides_idle(tpg: EmbeddedPostgres, sessions: Sessions) -> None:
    idle = sessions.open(tpg, 2, application_name="fr-web", **APP)
    time.sleep(0.3)
    [tx] = sessions.open(tpg, 1, application_name="fr-jobs", state="idle in transaction", **APP)
    src = source(tpg)
    snap = src.take()
    frame = build_frame(snap, View(application="fr-*"))
    assert {r.application for r in frame.rows} == {"fr-web", "fr-jobs"}
    # longest in its state first: the idle sessions opened before the transaction
    assert [r.pid for r in frame.rows][-1] == tx.info.backend_pid
    by_xact = build_frame(snap, View(application="fr-", sort="xact_age"))
    assert by_xact.rows[0].pid == tx.info.backend_pid  # the only one with a transaction
    assert [r.xact_age for r in by_xact.rows[1:]] == [None, None]  # no value: last
    asc = build_frame(snap, View(application="fr-*", sort="pid", descending=False))
    assert [r.pid for r in asc.rows] == sorted(r.pid for r in asc.rows)
    hidden_idle = build_frame(snap, View(application="fr-*", hide_idle=True))
    assert [r.pid for r in hidden_idle.rows] == [tx.info.backend_pid]
    only_state = build_frame(snap, View(state="idle in transaction", application="fr"))
    assert [r.state for r in only_state.rows] == ["idle in transaction"]
    assert build_frame(snap, View(user="nobody-like-this")).rows == ()
    assert frame.usable_slots == 27 and frame.used_slots >= 3
    assert dict(frame.by_state)["idle in transaction"] >= 1
    assert all(r.holder == "" for r in frame.rows)  # the holder column waits for the tracker
    assert len(idle) == 2
    src.close()


def test_view_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown sort key"):
        View(sort="size")
    with pytest.raises(ValueError, match="unknown filter"):
        View().with_filter("host", "x")
    keys = list(SORT_KEYS)
    view = View()
    for _ in keys:
        view = view.next_sort()
    assert view.sort == "state_age"


def test_what_may_be_terminated(tpg: EmbeddedPostgres, sessions: Sessions) -> None:
    [plain] = sessions.open(tpg, 1, application_name="ma-app", **APP)
    [su] = sessions.open(tpg, 1, application_name="ma-admin")
    [human] = sessions.open(tpg, 1, application_name="psql", **APP)
    [other_pgw] = sessions.open(tpg, 1, application_name="pgwarden-guard", **APP)
    src = source(tpg)
    snap = src.take()
    rows = {r.pid: r for r in build_frame(snap).rows}
    assert may_act(rows[plain.info.backend_pid], snap) is None
    assert "superuser" in (may_act(rows[su.info.backend_pid], snap) or "")
    # the bootstrap superuser also has REPLICATION, protected as in the guard
    assert "replication" in (may_act(rows[su.info.backend_pid], snap,
                                     Protection(allow_superuser=True)) or "")
    assert may_act(rows[su.info.backend_pid], snap,
                   Protection(allow_superuser=True, protect_replication_roles=False)) is None
    assert "psql" in (may_act(rows[human.info.backend_pid], snap) or "")
    assert "pgwarden" in (may_act(rows[other_pgw.info.backend_pid], snap) or "")
    assert snap.server.self_pid not in rows  # top's own session is not even shown
    refused = src.act(rows[su.info.backend_pid], "terminate")
    assert not refused.done and refused.message.startswith("refused")
    assert alive(tpg, su.info.backend_pid)
    src.close()


def test_a_session_that_moved_on_is_not_touched(tpg: EmbeddedPostgres,
                                                sessions: Sessions) -> None:
    [s] = sessions.open(tpg, 1, application_name="mo-app", **APP)
    src = source(tpg)
    snap = src.take()
    [row] = build_frame(snap, View(application="mo-app")).rows
    s.execute("select 1")  # used since the frame was drawn
    acted = src.act(row, "terminate")
    assert not acted.done and "used since" in acted.message
    assert alive(tpg, s.info.backend_pid)
    src.close()


async def _filter(pilot: object, app: TopApp, key: str, text: str) -> None:
    await pilot.press(key)  # type: ignore[attr-defined]
    await pilot.pause()  # type: ignore[attr-defined]
    await pilot.press(*list(text), "enter")  # type: ignore[attr-defined]
    await pilot.pause()  # type: ignore[attr-defined]


async def test_headless_sort_filter_terminate(tpg: EmbeddedPostgres,
                                              sessions: Sessions) -> None:
    [victim] = sessions.open(tpg, 1, application_name="hlvictim", state="idle in transaction",
                             **APP)
    [human] = sessions.open(tpg, 1, application_name="psql", **APP)
    sessions.open(tpg, 2, application_name="hlother", **APP)
    app = TopApp(source(tpg), interval=30.0)
    async with app.run_test(size=(200, 40)) as pilot:
        await app.reload()
        await pilot.pause()
        assert app.frame is not None and app.frame.view.sort == "state_age"
        await pilot.press("s")
        assert app.frame.view.sort == "xact_age"
        assert app.frame.rows[0].pid == victim.info.backend_pid  # the only open transaction
        await pilot.press("r")
        assert app.frame.view.descending is False
        await _filter(pilot, app, "a", "hlvictim")
        assert [r.pid for r in app.frame.rows] == [victim.info.backend_pid]
        table = app.query_one("#sessions")
        assert table.row_count == 1  # type: ignore[attr-defined]
        # terminate: asks first; 'n' does nothing
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, Confirm)
        assert f"pid {victim.info.backend_pid}" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert alive(tpg, victim.info.backend_pid) and app.status == "nothing done"
        await pilot.press("k")
        await pilot.pause()
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        wait_gone(tpg, victim.info.backend_pid)
        assert app.status.startswith(f"terminated pid {victim.info.backend_pid}")
        # a protected session is refused without asking
        await pilot.press("x")
        await _filter(pilot, app, "a", "psql")
        assert [r.pid for r in app.frame.rows] == [human.info.backend_pid]
        await pilot.press("k")
        await pilot.pause()
        assert not isinstance(app.screen, Confirm)
        assert app.status.startswith("refused") and "psql" in app.status
        assert alive(tpg, human.info.backend_pid)
        # hide idle, pause
        await pilot.press("x", "i")
        assert all(r.state != "idle" for r in app.frame.rows)
        await pilot.press("p")
        assert app.paused
        await pilot.press("q")
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")


def _top(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pgwarden", "top", *args], capture_output=True,
                          text=True, timeout=60, env=environ, check=False)


def test_once_prints_one_frame_without_colours(tpg: EmbeddedPostgres,
                                               sessions: Sessions) -> None:
    [tx] = sessions.open(tpg, 1, application_name="once-jobs", state="idle in transaction",
                         **APP)
    res = _top("--once", "--dsn", tpg.conninfo(**APP), "--application", "once-*")
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stdout  # not a terminal: no colours
    lines = res.stdout.splitlines()
    assert lines[0].startswith("pgwarden top  PostgreSQL ")
    assert "usable (" in lines[1]
    assert lines[2].startswith("1 of ") and "filter application~once-*" in lines[2]
    assert "holder" in res.stdout and "query" in res.stdout
    [row] = [ln for ln in lines if str(tx.info.backend_pid) in ln]
    assert "once-jobs" in row and "idle in transaction" in row
    assert "app-pw" not in res.stdout + res.stderr


def test_once_as_a_role_without_pg_monitor_says_what_it_cannot_see(
        tpg: EmbeddedPostgres, sessions: Sessions) -> None:
    sessions.open(tpg, 2, application_name="nm-top", state="idle in transaction", **APP)
    res = _top("--once", "--dsn", tpg.conninfo(user="watcher", password="watcher-pw"),
               NO_COLOR="1")
    assert res.returncode == 0, res.stderr
    assert "GRANT pg_monitor TO watcher;" in res.stdout
    assert "sessions of other roles are hidden from watcher" in res.stdout
    rows = [ln for ln in res.stdout.splitlines() if "nm-top" in ln]
    assert len(rows) == 2 and all("(hidden)" in ln for ln in rows)


def test_once_cannot_connect_is_one_line() -> None:
    res = _top("--once", "--dsn", "host=127.0.0.1 port=1 password=s3cret", "--connect-timeout",
               "2")
    assert res.returncode == 3
    assert len(res.stderr.strip().splitlines()) == 1 and "s3cret" not in res.stderr
    res = _top("--sort", "size")
    assert res.returncode == 64 and "--sort" in res.stderr
