from __future__ import annotations

import pytest

from pgwarden.conninfo import redact, resolve
from pgwarden.errors import ConfigError


def test_explicit_dsn_wins_over_database_url() -> None:
    t = resolve("postgresql://a@h1:5433/db1", environ={"DATABASE_URL": "postgresql://b@h2/db2"})
    assert (t.host, t.port, t.dbname, t.user, t.source) == ("h1", 5433, "db1", "a", "--dsn")


def test_database_url_used_when_no_dsn() -> None:
    t = resolve(None, environ={"DATABASE_URL": "postgresql://b@h2:6000/db2"})
    assert (t.host, t.port, t.dbname, t.source) == ("h2", 6000, "db2", "DATABASE_URL")


def test_libpq_environment_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "envhost")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGDATABASE", "envdb")
    t = resolve(None, environ={})
    assert (t.host, t.port, t.dbname, t.source) == ("envhost", 6543, "envdb", "libpq environment")


def test_application_name_and_connect_timeout_are_set() -> None:
    t = resolve("postgresql://u@h/db?application_name=theirs", command="doctor")
    assert "application_name=pgwarden-doctor" in t.conninfo
    assert "connect_timeout=5" in t.conninfo
    assert t.connect_timeout == 5
    # a timeout the user chose is kept
    assert resolve("host=h connect_timeout=17", command="x").connect_timeout == 17


def test_sqlalchemy_style_urls_are_accepted() -> None:
    t = resolve("postgresql+psycopg://u:pw@h:5555/app")
    assert (t.host, t.port, t.dbname) == ("h", 5555, "app")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:s3cr3t-pw@db:5432/shop",
        "host=db password=s3cr3t-pw user=app",
        "host=db password='s3cr3t-pw' user=app",
        "postgresql://db/shop?user=app&password=s3cr3t-pw",
        "postgres://app:s3cr3t-pw@db/shop garbage = =",
    ],
)
def test_redact_hides_password(dsn: str) -> None:
    out = redact(dsn)
    assert "s3cr3t-pw" not in out
    assert "***" in out


def test_target_never_shows_password() -> None:
    t = resolve("postgresql://app:s3cr3t-pw@db:5432/shop", command="check")
    assert "s3cr3t-pw" not in t.redacted
    assert "s3cr3t-pw" not in t.where
    assert "s3cr3t-pw" in t.conninfo  # psycopg needs it


@pytest.mark.parametrize("dsn", ["host=db port", "password=s3cr3t pw", "user='unterminated"])
def test_malformed_dsn_is_a_config_error_without_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(dsn)
    msg = str(info.value)
    assert msg.startswith("malformed DSN (from --dsn)")
    assert "s3cr3t" not in msg
    assert "postgresql://user@host" in msg  # says what form is expected
