"""``pgwarden budget``: the real report's budget, discovery from a live server, bad files."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgwarden.budget import evaluate, load_budget, slots_for
from pgwarden.embedded import EmbeddedPostgres

from ..conftest import Sessions
from ..helpers import run_cli

HERE = Path(__file__).parent
SUPABASE = HERE / "supabase.toml"


def test_the_real_report_is_over_and_names_the_worker(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    r = run_cli(capsys, "budget", str(SUPABASE), "--format", "json")
    assert r.code == 2, r.err  # over = the doctor's critical
    j = r.json()
    assert j["verdict"] == "over"
    assert j["server"]["usable_slots"] == 97 and j["server"]["available"] == 87
    worst = {s["name"]: s["worst_case"] for s in j["services"]}
    assert worst == {"worker": 50, "ingest": 15, "persistence": 10, "postgrest": 10,
                     "supavisor": 5}
    assert j["total_worst_case"] == 90
    assert j["overflowing"] == ["worker"]
    # the suggested sizes fit, and only the worker's pools shrink
    assert j["sizing_fits"] and j["suggested_total"] <= j["server"]["available"]
    worker = next(s for s in j["services"] if s["name"] == "worker")
    assert [p["kind"] for p in worker["suggested"]] == ["sqlalchemy", "asyncpg"]
    sa, apg = worker["suggested"]
    assert sa["pool_size"] + sa["max_overflow"] + apg["max_size"] == worker["allocated"] < 50
    text = run_cli(capsys, "budget", str(SUPABASE))
    assert text.code == 2
    assert "OVER" in text.out and "overflowing: worker" in " ".join(text.out.split())
    assert "PgBouncer that fits" in text.out


def test_suggested_sizes_fit_when_replicated() -> None:
    budget = load_budget(SUPABASE)
    slots = slots_for(budget)
    report = evaluate(budget, slots)
    total = sum(s.allocated for s in report.services)
    assert total <= slots.available
    # re-reading the suggestion as a budget fits too
    for s in report.services:
        for p in s.suggestions:
            assert all(v >= 0 for v in p.suggested.values())


def test_no_sizing_fits_gives_pgbouncer(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[server]\nmax_connections = 20\n[services.web]\nkind = "asyncpg"\n'
                 'replicas = 10\nprocesses = 4\n[services.cron]\nkind = "fixed"\n'
                 'connections = 2\n')
    r = run_cli(capsys, "budget", str(f), "--format", "json")
    assert r.code == 2
    j = r.json()
    assert j["sizing_fits"] is False and j["overflowing"] == ["web"]
    assert j["pgbouncer"]["max_client_conn"] >= 400
    assert j["pgbouncer"]["max_db_connections"] <= j["server"]["available"] - 2


@pytest.mark.parametrize(("services", "code", "verdict"), [
    ('[services.a]\nkind = "asyncpg"\nmin_size = 1\nmax_size = 5\n', 0, "fits"),
    ('[services.a]\nkind = "asyncpg"\nmax_size = 40\n', 1, "tight"),
])
def test_exit_codes_fits_and_tight(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   services: str, code: int, verdict: str) -> None:
    f = tmp_path / "b.toml"
    f.write_text("[server]\nmax_connections = 50\nheadroom = 3\n" + services)
    r = run_cli(capsys, "budget", str(f), "--format", "json")
    assert r.code == code and r.json()["verdict"] == verdict


def test_discovery_from_a_live_server(make_cluster: Callable[..., EmbeddedPostgres],
                                      sessions: Sessions, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    pg = make_cluster(max_connections=30)
    held = sessions.open(pg, 6, application_name="orders-api")
    sessions.open(pg, 3, application_name="reports")
    sessions.open(pg, 2, application_name="billing-1")
    sessions.open(pg, 1, application_name="billing-2")
    time.sleep(0.2)
    for c in held[:2]:  # the peak stays what was seen
        c.close()
    f = tmp_path / "b.toml"
    f.write_text('[services.orders]\nkind = "psycopg_pool"\nmax_size = 4\n'
                 'applications = "orders-api"\n'
                 '[services.billing]\nkind = "asyncpg"\nmin_size = 1\nmax_size = 2\n'
                 'applications = ["billing-*"]\n')
    r = run_cli(capsys, "budget", str(f), "--dsn", pg.url, "--sample", "0.3", "--format",
                "json")
    assert r.code == 0, r
    j = r.json()
    assert j["server"]["from"] == "server" and j["server"]["usable_slots"] == 27
    by_name = {s["name"]: s for s in j["services"]}
    assert by_name["orders"]["observed_peak"] == 4 and by_name["orders"]["worst_case"] == 4
    assert by_name["billing"]["observed_peak"] == 3 and by_name["billing"]["worst_case"] == 2
    # an application no service declares is counted at its peak
    assert by_name["reports"]["declared"] is False and by_name["reports"]["worst_case"] == 3
    assert j["observation"]["peaks"]["orders-api"] == 4
    assert pg.password not in r.out + r.err
    # discovery alone, without a file
    r = run_cli(capsys, "budget", "--dsn", pg.url, "--format", "json")
    assert r.code == 0
    assert {s["name"] for s in r.json()["services"]} >= {"orders-api", "reports", "billing-1"}


@pytest.mark.parametrize(("text", "key"), [
    ('[server]\nmax_connections = "a lot"\n', "server.max_connections"),
    ("[server]\nmax_connections = 100\nheadroom = '120%'\n", "server.headroom"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "sqlalchemy"\npool_size = 0\n',
     "services.w.pool_size"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "sqlalchemy"\nmax_overflow = -1\n',
     "services.w.max_overflow"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "hikari"\n', "services.w.kind"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "asyncpg"\nmaxsize = 3\n',
     "services.w.maxsize"),
    ('[server]\nmax_connections = 100\n[services.w]\n[[services.w.pools]]\nkind = "asyncpg"\n'
     'min_size = 9\nmax_size = 3\n', "services.w.pools[0].min_size"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "psycopg2"\n',
     "services.w.maxconn"),
    ('[services.w]\nkind = "asyncpg"\n', "server.max_connections"),
    ('[server]\nmax_connections = 100\n[services.w]\nreplicas = 2\n', "services.w.pools"),
    ('[server]\nmax_connections = 100\n[services.w]\nkind = "sqlalchemy"\ndriver = "jdbc"\n',
     "services.w.driver"),
])
def test_bad_budget_file_one_line_78(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78, r
    assert len(r.err.strip().splitlines()) == 1
    assert str(f) in r.err and f"'{key}'" in r.err
    assert "Traceback" not in r.err


def test_unreadable_and_invalid_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "budget", str(tmp_path / "missing.toml"))
    assert r.code == 78 and "cannot read" in r.err
    f = tmp_path / "x.toml"
    f.write_text("[server\n")
    r = run_cli(capsys, "budget", str(f))
    assert r.code == 78 and "not valid TOML" in r.err
    assert run_cli(capsys, "budget").code == 64
