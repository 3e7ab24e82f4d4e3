"""``pgwarden budget``: impossible server figures, empty and absurd budgets, options that only
make sense together, and discovery by a role without pg_monitor."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgwarden.embedded import EmbeddedPostgres

from ..conftest import Sessions
from ..helpers import run_cli

SERVICE = '[services.web]\nkind = "asyncpg"\nmin_size = 1\nmax_size = 2\n'


def _file(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "b.toml"
    f.write_text(text)
    return f


@pytest.mark.parametrize(("server", "key", "says"), [
    ('max_connections = 100\nheadroom = "99%"\n', "server.headroom", "leaves none"),
    ("max_connections = 100\nheadroom = 200\n", "server.headroom", "leaves none"),
    ("max_connections = 100\nheadroom = 97\n", "server.headroom", "leaves none"),
    ("max_connections = 100\nsuperuser_reserved_connections = 150\n",
     "server.superuser_reserved_connections", "PostgreSQL refuses to start"),
    ("max_connections = 100\nsuperuser_reserved_connections = 60\nreserved_connections = 40\n",
     "server.superuser_reserved_connections", "PostgreSQL refuses to start"),
])
def test_impossible_server_figures_are_78(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          server: str, key: str, says: str) -> None:
    f = _file(tmp_path, "[server]\n" + server + SERVICE)
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78, r
    assert len(r.err.strip().splitlines()) == 1
    assert str(f) in r.err and f"'{key}'" in r.err and says in r.err


def test_headroom_against_the_live_servers_slots(pg: EmbeddedPostgres, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, '[server]\nheadroom = "99%"\n' + SERVICE)
    r = run_cli(capsys, "budget", str(f), "--dsn", pg.url)
    assert r.code == 78, r
    assert "'server.headroom'" in r.err and "leaves none" in r.err


def test_no_server_slots_left_says_no_pgbouncer_fits(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, "[server]\nmax_connections = 20\nsuperuser_reserved_connections = 0\n"
              'headroom = 0\n[services.cron]\nkind = "fixed"\nconnections = 20\n' + SERVICE)
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 2
    assert "PgBouncer that fits" not in r.out
    assert "no PgBouncer fits" in " ".join(r.out.split())
    j = run_cli(capsys, "budget", str(f), "--format", "json").json()
    assert j["pgbouncer"]["fits"] is False


def test_sample_without_dsn_is_a_usage_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, "[server]\nmax_connections = 100\n" + SERVICE)
    r = run_cli(capsys, "budget", str(f), "--sample", "5")
    assert r.code == 64 and "--sample" in r.err and "--dsn" in r.err


def test_empty_applications_list_says_empty(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, "[server]\nmax_connections = 100\n" + SERVICE + "applications = []\n")
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78 and "'services.web.applications'" in r.err
    assert "empty" in r.err


def test_a_budget_without_services_is_78(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, "[server]\nmax_connections = 100\n")
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78 and "no services" in r.err and "'services'" in r.err


def test_absurd_sizes_are_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _file(tmp_path, "[server]\nmax_connections = 100\n[services.big]\nkind = \"fixed\"\n"
              "connections = 1000000\nreplicas = 1000000\nprocesses = 1000000\n")
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78, r
    assert "'services.big'" in r.err and "1,000,000" in r.err
    assert "%" not in r.out


def test_discovery_counts_sessions_hidden_from_a_role_without_pg_monitor(
        pg: EmbeddedPostgres, sessions: Sessions, capsys: pytest.CaptureFixture[str]) -> None:
    pg.execute("drop role if exists budget_low")
    pg.execute("create role budget_low login password 'low-pw'")
    sessions.open(pg, 6, application_name="hidden-worker")
    low = f"postgresql://budget_low:low-pw@{pg.host}:{pg.port}/postgres"
    r = run_cli(capsys, "budget", "--dsn", low, "--format", "json")
    assert r.code in (0, 1, 2), r
    j = r.json()
    assert j["observation"]["peaks"]["hidden-worker"] == 6
    assert j["observation"]["hidden_peak"] >= 6
    assert "GRANT pg_monitor TO budget_low;" in j["observation"]["hint"]
    text = run_cli(capsys, "budget", "--dsn", low)
    assert "GRANT pg_monitor TO budget_low;" in " ".join(text.out.split())
    assert "low-pw" not in text.out + text.err
