"""``pgwarden pgbouncer init``: the auth file matches the auth_type (md5 secrets, a password from
--dsn), missing or passwordless roles, values that would inject lines into the files, --out
quirks, and no PgBouncer where no server slots remain. Logins go through a real PgBouncer."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgwarden.embedded import EmbeddedPostgres
from pgwarden.pgbouncer.ini import auth_file_text, ini_text

from ..helpers import CliResult, run_cli

APP_PW = "app-secret-pw"
MD5_PW = "md5-secret-pw"
CLOSED = "postgresql://postgres:pw@127.0.0.1:1/postgres"


def _budget(tmp_path: Path, *users: str, extra: str = "") -> Path:
    f = tmp_path / "budget.toml"
    f.write_text("".join(f'[services.s{i}]\nkind = "psycopg_pool"\nmin_size = 1\nmax_size = 2\n'
                         f'user = "{u}"\n' for i, u in enumerate(users)) + extra)
    return f


def _init(capsys: pytest.CaptureFixture[str], budget: Path, dsn: str, out: Path,
          *extra: str) -> CliResult:
    return run_cli(capsys, "pgbouncer", "init", str(budget), "--dsn", dsn, "--out", str(out),
                   *extra)


def _one_line(r: CliResult) -> None:
    assert len(r.err.strip().splitlines()) == 1, r
    assert "Traceback" not in r.err


def test_md5_secret_gives_auth_type_md5_and_says_so(
        make_cluster: Callable[..., EmbeddedPostgres], make_bouncer: Callable[..., Any],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_cluster(max_connections=30)
    # a server that still lets md5 roles in (their verifier cannot do SCRAM)
    (server.data_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 md5\n")
    server.execute("select pg_reload_conf()")
    server.execute(f"create role app login password '{APP_PW}'")
    with server.connect() as conn:
        conn.execute("set password_encryption = 'md5'")
        conn.execute(f"create role md5u login password '{MD5_PW}'")
    out = tmp_path / "o"
    r = _init(capsys, _budget(tmp_path, "md5u", "app"), server.url, out)
    assert r.code == 0, r
    text = " ".join(r.out.split())
    assert "SCRAM secrets of md5u" not in text
    assert "md5 hash of md5u" in text and "password_encryption" in text
    assert "auth_type = md5" in text
    ini = (out / "pgbouncer.ini").read_text()
    assert "auth_type = md5" in ini and "auth_type = scram-sha-256" not in ini
    userlist = (out / "userlist.txt").read_text()
    assert '"md5u" "md5' in userlist and '"app" "SCRAM-SHA-256$' in userlist
    bouncer = make_bouncer(include=out / "pgbouncer.ini")
    for user, pw in (("md5u", MD5_PW), ("app", APP_PW)):
        with psycopg.connect(bouncer.conninfo(user=user, password=pw, dbname="postgres"),
                             prepare_threshold=None, autocommit=True) as conn:
            assert conn.execute("select current_user").fetchone() == (user,)


def test_dsn_password_is_written_and_described_as_such(
        make_cluster: Callable[..., EmbeddedPostgres], make_bouncer: Callable[..., Any],
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = make_cluster(max_connections=30)
    server.execute(f"create role app login password '{APP_PW}'")
    out = tmp_path / "o"
    dsn = f"postgresql://app:{APP_PW}@{server.host}:{server.port}/postgres"
    r = _init(capsys, _budget(tmp_path, "app"), dsn, out)
    assert r.code == 0, r
    assert APP_PW not in r.out + r.err
    text = " ".join(r.out.split())
    assert "SCRAM secrets of app" not in text
    assert "password of app from --dsn (plain text" in text
    assert "auth_type = scram-sha-256" in (out / "pgbouncer.ini").read_text()
    bouncer = make_bouncer(include=out / "pgbouncer.ini")
    with psycopg.connect(bouncer.conninfo(user="app", password=APP_PW, dbname="postgres"),
                         prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)


def test_missing_role_and_role_without_password(pg: EmbeddedPostgres, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pg.execute("drop role if exists init_nopw")
    pg.execute("create role init_nopw login")
    budget = _budget(tmp_path, "nosuchuser")
    r = _init(capsys, budget, pg.url, tmp_path / "o")
    assert r.code == 78, r
    _one_line(r)
    assert "role nosuchuser does not exist" in r.err and "superuser" not in r.err
    assert "'services.s0.user'" in r.err and str(budget) in r.err
    r = _init(capsys, _budget(tmp_path, "init_nopw"), pg.url, tmp_path / "o")
    assert r.code == 78, r
    _one_line(r)
    assert "role init_nopw has no password" in r.err and "ALTER ROLE init_nopw" in r.err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("option", "value"), [
    ("--admin-user", 'ad"min\nevil = 1'),
    ("--admin-user", "a,b"),
    ("--listen-addr", "bad addr;x"),
    ("--listen-addr", "127.0.0.1\nevil = 1"),
    ("--pgbouncer-version", "0.1"),
    ("--pgbouncer-version", "1.22 and more"),
])
def test_option_values_that_cannot_be_written_are_64(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str) -> None:
    # refused before connecting: the server here does not even exist
    r = _init(capsys, _budget(tmp_path, "app"), CLOSED, tmp_path / "o", option, value)
    assert r.code == 64, r
    _one_line(r)
    assert option in r.err
    assert not (tmp_path / "o").exists()


def test_out_directory_with_a_newline_is_64(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    r = _init(capsys, _budget(tmp_path, "app"), CLOSED, tmp_path / "o\nevil = 1")
    assert r.code == 64, r
    _one_line(r)
    assert "--out" in r.err


def test_the_writers_refuse_line_breaks_in_any_value() -> None:
    with pytest.raises(ValueError, match="admin_users"):
        ini_text({"admin_users": "a\nevil = 1"}, {})
    with pytest.raises(ValueError, match="database name"):
        ini_text({}, {"a\nb": {"host": "h"}})
    with pytest.raises(ValueError, match="host"):
        ini_text({}, {"db": {"host": "h\nevil = 1"}})
    with pytest.raises(ValueError, match="user name"):
        auth_file_text({"a\nb": "x"})
    with pytest.raises(ValueError, match="secret of app") as info:
        auth_file_text({"app": "pw\nevil"})
    assert "pw" not in str(info.value).replace("password", "")


def test_out_quirks(pg: EmbeddedPostgres, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    budget = _budget(tmp_path, "postgres")
    # a missing parent is refused (a typo must not scatter secrets), nothing is created
    r = _init(capsys, budget, pg.url, tmp_path / "nonexistent" / "dir")
    assert r.code == 64, r
    _one_line(r)
    assert "does not exist" in r.err and not (tmp_path / "nonexistent").exists()
    # not a directory
    r = _init(capsys, budget, pg.url, Path("/dev/full"))
    assert r.code == 64 and "not a directory" in r.err and "File exists" not in r.err
    # a missing last directory is created, 0700
    out = tmp_path / "new"
    r = _init(capsys, budget, pg.url, out)
    assert r.code == 0, r
    assert oct(stat.S_IMODE(os.stat(out).st_mode)) == "0o700"
    assert f"created {out} (mode 0700)" in " ".join(r.out.split())
    if os.geteuid() == 0:
        assert "chown" in r.out
    # a dangling symlink counts as existing; one file "exists"
    (out / "pgbouncer.ini").unlink()
    (out / "userlist.txt").unlink()
    (out / "pgbouncer.ini").symlink_to(tmp_path / "nowhere")
    r = _init(capsys, budget, pg.url, out)
    assert r.code == 64, r
    assert f"{out / 'pgbouncer.ini'} exists;" in r.err and "--force" in r.err


def test_init_refuses_when_no_server_slots_remain(pg: EmbeddedPostgres, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    budget = _budget(tmp_path, "postgres",
                     extra='[services.cron]\nkind = "fixed"\nconnections = 1000\n')
    r = _init(capsys, budget, pg.url, tmp_path / "o")
    assert r.code == 78, r
    _one_line(r)
    assert "no PgBouncer fits" in r.err and str(budget) in r.err
    assert not (tmp_path / "o").exists()


def test_a_budget_name_that_cannot_be_written_is_78(pg: EmbeddedPostgres, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    budget = _budget(tmp_path, "u" * 70)  # the budget file allows 100 characters, PgBouncer 63
    r = _init(capsys, budget, pg.url, tmp_path / "o")
    assert r.code == 78, r
    _one_line(r)
    assert "'services.s0.user'" in r.err and "63 bytes" in r.err
    assert not (tmp_path / "o").exists()
