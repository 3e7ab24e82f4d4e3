from __future__ import annotations

import pytest

from pgwarden.diagnose import diagnose, explain

from .helpers import run_cli

CASES = {
    "FATAL:  sorry, too many clients already": "too_many_clients",
    "53300": "too_many_clients",
    "FATAL: remaining connection slots are reserved for non-replication superuser connections":
        "too_many_clients",
    "57P01": "admin_shutdown",
    "FATAL: terminating connection due to administrator command": "admin_shutdown",
    "57P03": "cannot_connect_now",
    "FATAL: the database system is starting up": "cannot_connect_now",
    "25P03": "idle_in_transaction_timeout",
    "57P05": "idle_session_timeout",
    "psycopg2.InterfaceError: connection already closed": "connection_closed",
    "SSL connection has been closed unexpectedly": "ssl_closed",
    "server closed the connection unexpectedly\n\tThis probably means the server terminated "
    "abnormally": "server_closed",
    "couldn't get a connection after 30.00 sec": "pool_exhausted",
    "sqlalchemy.exc.TimeoutError: QueuePool limit of size 5 overflow 10 reached, connection "
    "timed out, timeout 30.00": "pool_exhausted",
    "asyncpg.exceptions.ConnectionDoesNotExistError: connection was closed in the middle of "
    "operation": "server_closed",
    "asyncpg.exceptions._base.InterfaceError: cannot perform operation: another operation is "
    "in progress": "another_operation",
    'FATAL:  password authentication failed for user "app"': "auth_failed",
    'FATAL:  database "shop" does not exist': "database_missing",
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.items()))
def test_known_errors_are_explained(text: str, expected: str) -> None:
    found = diagnose(text)
    assert found is not None, text
    assert found.id == expected
    assert found.causes and found.fixes


def test_unknown_text_has_no_match() -> None:
    assert explain("the weather is fine") == []
    assert explain("   ") == []


def test_explain_command_text_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "explain", "FATAL: sorry, too many clients already")
    assert r.code == 0
    assert "53300" in r.out and "pg_use_reserved_connections" in r.out
    r = run_cli(capsys, "explain", "--format", "json", "57P01")
    assert r.code == 0
    assert r.json()["matches"][0]["id"] == "admin_shutdown"
    r = run_cli(capsys, "explain", "nothing we know")
    assert r.code == 1
    assert "no known error" in r.out
