"""Property-based tests (hypothesis) over what users type: DSNs in both forms with every libpq
parameter, valid and invalid values and secrets full of special characters, and CLI option
values. Whatever the input: never a traceback, always a documented exit code, never a secret in
any output.

Budget (fixed, so CI time is bounded): ``max_examples`` 150 for DSNs given with ``--dsn``, 60
through ``$DATABASE_URL``, 150 for option values; no deadline (a connection attempt to a closed
loopback port takes a few milliseconds, but CI machines stall). Every DSN points at 127.0.0.1
port 1 (nothing listens there: refused at once), so no example reaches a real server.
"""

from __future__ import annotations

import os
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import run_cli

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 64, 70, 74, 78, 130}

#: Secrets carry a marker so that a leak is unambiguous; the rest is any printable text.
_SECRET_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1, max_size=16)
SECRET = _SECRET_TEXT.map(lambda t: "S3cr" + t + "t!")

#: libpq keywords with a typed value: a valid sample and invalid text for each.
TYPED: dict[str, st.SearchStrategy[str]] = {
    "connect_timeout": st.sampled_from(["2", "10", " 3 "]),
    "keepalives": st.sampled_from(["0", "1"]),
    "keepalives_idle": st.integers(1, 600).map(str),
    "keepalives_interval": st.integers(1, 60).map(str),
    "keepalives_count": st.integers(1, 9).map(str),
    "tcp_user_timeout": st.integers(0, 60_000).map(str),
    "sslmode": st.sampled_from(["disable", "allow", "prefer", "require"]),
    "gssencmode": st.sampled_from(["disable", "prefer"]),
    "target_session_attrs": st.sampled_from(["any", "read-write", "read-only", "primary",
                                             "standby", "prefer-standby"]),
    "channel_binding": st.sampled_from(["disable", "prefer"]),
    "load_balance_hosts": st.sampled_from(["disable", "random"]),
    "ssl_min_protocol_version": st.sampled_from(["TLSv1.2", "tlsv1.3"]),
    "min_protocol_version": st.sampled_from(["3.0", "latest"]),
    "replication": st.sampled_from(["false", "0", "off"]),
    "sslnegotiation": st.sampled_from(["postgres"]),
    "sslcertmode": st.sampled_from(["disable", "allow"]),
}
#: keywords whose value is free text (file names, names, options)
FREE = ("application_name", "client_encoding", "dbname", "user", "options", "sslcert",
        "sslkey", "sslrootcert", "passfile", "krbsrvname", "require_auth", "service")
SECRETS = ("password", "sslpassword", "oauth_client_secret")

_ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\x00"), max_size=20)


@st.composite
def dsns(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A DSN (URL or key=value) to 127.0.0.1:1 and the secrets it carries."""
    params: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(sorted(TYPED)), max_size=4, unique=True)):
        params[key] = draw(st.one_of(TYPED[key], _ANY_TEXT) if draw(st.booleans())
                           else TYPED[key])
    for key in draw(st.lists(st.sampled_from(FREE), max_size=3, unique=True)):
        params[key] = draw(_ANY_TEXT)
    secrets = {key: draw(SECRET) for key in draw(
        st.lists(st.sampled_from(SECRETS), min_size=1, max_size=3, unique=True))}
    params.update(secrets)
    params.pop("service", None) if draw(st.booleans()) else None
    if draw(st.booleans()):
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k != "password"})
        user = urllib.parse.quote(params.get("user", "app"), safe="")
        pw = urllib.parse.quote(params.get("password", ""), safe="")
        dsn = f"postgresql://{user}:{pw}@127.0.0.1:1/db" + (f"?{query}" if query else "")
    else:
        def quote(v: str) -> str:
            return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
        dsn = " ".join(["host=127.0.0.1", "port=1"]
                       + [f"{k}={quote(v)}" for k, v in params.items()])
    return dsn, list(secrets.values())


def _assert_clean(code: int, out: str, err: str, secrets: list[str]) -> None:
    assert code in DOCUMENTED_EXIT_CODES, (code, err)
    assert "Traceback" not in out + err
    for secret in secrets:
        assert secret not in out and secret not in err, (secret, out, err)
        for encoded in (urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
            assert encoded not in out + err
    if code not in (0, 1, 2):
        assert len(err.strip().splitlines()) <= 1, err


COMMANDS = (["check"], ["status"], ["doctor"], ["guard", "--once"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dsn=dsns(), command=st.sampled_from(COMMANDS))
def test_any_dsn_gives_a_documented_exit_code_and_no_secret(
        dsn: tuple[str, list[str]], command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text, secrets = dsn
    r = run_cli(capsys, *command, "--dsn", text, "--connect-timeout", "2")
    _assert_clean(r.code, r.out, r.err, secrets)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dsn=dsns())
def test_any_database_url_gives_a_documented_exit_code_and_no_secret(
        dsn: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    text, secrets = dsn
    saved = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = text
    try:
        r = run_cli(capsys, "doctor", "--connect-timeout", "2")
    finally:
        if saved is None:
            del os.environ["DATABASE_URL"]
        else:
            os.environ["DATABASE_URL"] = saved
    _assert_clean(r.code, r.out, r.err, secrets)


OPTIONS = {
    ("check",): ["--connect-timeout"],
    ("doctor",): ["--connect-timeout", "--sample", "--idle-after", "--idle-in-transaction-after",
                  "--long-query-after", "--idle-min-sessions", "--saturation-warning",
                  "--saturation-critical", "--churn-rate", "--format"],
    ("guard", "--once"): ["--interval", "--idle-after", "--idle-in-transaction-after",
                          "--idle-only-above", "--cancel-active-after", "--emergency-at",
                          "--emergency-target", "--emergency-min-idle", "--max-per-pass",
                          "--max-per-minute", "--protect-network", "--application"],
}
_OPTION_VALUE = st.one_of(
    _ANY_TEXT,
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-10**12, 10**12).map(str),
    st.sampled_from(["5min", "80%", "0", "-1", "nan", "inf", "1e309", "0.5", "150%", "10.0.0.0/8",
                     "not/a/cidr", ""]),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_option_value_gives_a_documented_exit_code(data: st.DataObject,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    command = data.draw(st.sampled_from(sorted(OPTIONS)))
    options = data.draw(st.lists(st.sampled_from(OPTIONS[command]), min_size=1, max_size=3,
                                 unique=True))
    args: list[str] = []
    for option in options:
        args += [option, data.draw(_OPTION_VALUE)]
    r = run_cli(capsys, *command, *args, "--dsn", "host=127.0.0.1 port=1 password=S3cr-opt!",
                "--connect-timeout", "2")
    _assert_clean(r.code, r.out, r.err, ["S3cr-opt!"])
