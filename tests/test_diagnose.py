from __future__ import annotations

import psycopg
import pytest

from pgwarden.diagnose import DIAGNOSES, KINDS, classify, diagnose, explain

from .helpers import run_cli

CASES = {
    "FATAL:  sorry, too many clients already": "too_many_clients",
    "53300": "too_many_clients",
    # PostgreSQL <= 15
    "FATAL: remaining connection slots are reserved for non-replication superuser connections":
        "reserved_slots_only",
    # PostgreSQL 16+ (read off a real 16 server in tests/test_cli.py)
    "FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute":
        "reserved_slots_only",
    'FATAL:  remaining connection slots are reserved for roles with privileges of the '
    '"pg_use_reserved_connections" role': "reserved_slots_only",
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
    'connection is bad: invalid sslmode value: "bogus"': "invalid_parameter",
    'invalid integer value "x" for connection option "keepalives_idle"': "invalid_parameter",
    'connection is bad: invalid port number: "99999"': "invalid_parameter",
    "bad value for connect_timeout: 'abc'": "invalid_parameter",
    'invalid "ssl_min_protocol_version" value: "x"': "invalid_parameter",
    "permission denied for function pg_terminate_backend": "permission_denied",
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.items()))
def test_known_errors_are_explained(text: str, expected: str) -> None:
    found = diagnose(text)
    assert found is not None, text
    assert found.id == expected
    assert found.causes and found.fixes
    assert found.kind in KINDS


def test_a_message_quoting_a_sqlstate_ranks_its_pattern_first() -> None:
    # 53300 is both diagnoses' code: the wording decides which one
    found = explain("FATAL: sorry, too many clients already (SQLSTATE 53300)")
    assert [d.id for d in found][:2] == ["too_many_clients", "reserved_slots_only"]
    found = explain("53300: remaining connection slots are reserved for roles with the "
                    "SUPERUSER attribute")
    assert found[0].id == "reserved_slots_only"


def test_every_kind_is_known_and_ids_are_unique() -> None:
    assert {d.kind for d in DIAGNOSES} <= set(KINDS)
    assert len({d.id for d in DIAGNOSES}) == len(DIAGNOSES)


def test_classify_connect_errors_without_sqlstate() -> None:
    """psycopg gives no SQLSTATE for errors raised while connecting: the message decides."""
    def failure(text: str) -> tuple[str, str | None]:
        f = classify(psycopg.OperationalError(
            f'connection failed: connection to server at "127.0.0.1", port 5432 failed: {text}'),
            connecting=True)
        return f.kind, f.sqlstate

    assert failure("FATAL:  sorry, too many clients already") == ("server_full", "53300")
    assert failure("FATAL:  remaining connection slots are reserved for roles with the "
                   "SUPERUSER attribute") == ("server_full", "53300")
    assert failure('FATAL:  password authentication failed for user "app"') == ("rejected",
                                                                                 "28P01")
    assert failure('FATAL:  role "nobody" does not exist')[0] == "rejected"
    assert failure("FATAL:  the database system is shutting down") == ("going_down", "57P03")
    assert failure("Connection refused\n\tIs the server running on that host")[0] == \
        "unreachable"
    assert failure("timeout expired")[0] == "unreachable"
    assert failure("something nobody has seen") == ("unreachable", None)
    invalid = classify(psycopg.ProgrammingError("bad value for connect_timeout: 'abc'"),
                       connecting=True)
    assert invalid.kind == "invalid"


def test_classify_uses_the_servers_sqlstate_first() -> None:
    exc = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    f = classify(exc)
    assert (f.kind, f.sqlstate, f.diagnosis and f.diagnosis.id) == (
        "session_ended", "57P01", "admin_shutdown")
    assert classify(psycopg.OperationalError("consuming input failed")).kind == "session_ended"
    assert classify(psycopg.errors.InsufficientPrivilege("permission denied for table x")).kind \
        == "permission"


def test_unknown_text_has_no_match() -> None:
    assert explain("the weather is fine") == []
    assert explain("   ") == []


def test_explain_command_text_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "explain", "FATAL: sorry, too many clients already")
    assert r.code == 0
    assert "53300" in r.out and "pg_terminate_backend" in r.out
    r = run_cli(capsys, "explain", "remaining connection slots are reserved for "
                "non-replication superuser connections")
    assert r.code == 0 and "pg_use_reserved_connections" in r.out
    r = run_cli(capsys, "explain", "--format", "json", "57P01")
    assert r.code == 0
    assert r.json()["matches"][0]["id"] == "admin_shutdown"
    r = run_cli(capsys, "explain", "nothing we know")
    assert r.code == 1
    assert "no known error" in r.out
