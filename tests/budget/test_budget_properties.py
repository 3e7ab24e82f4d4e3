"""Property-based: whatever a budget file holds, ``pgwarden budget`` ends with a documented
exit code and at most one line on stderr, never a traceback.

``max_examples`` is fixed (120 structured files, 80 raw texts) so the run time is bounded and
the same on every machine; ``derandomize=True`` makes a run reproducible.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..helpers import run_cli

DOCUMENTED = {0, 1, 2, 78}

_KEYS = ["kind", "driver", "pool_size", "max_overflow", "min_size", "max_size", "minconn",
         "maxconn", "threads", "db_pool", "connections", "replicas", "processes", "weight",
         "applications", "database", "user", "pools", "bogus"]
_KINDS = ["sqlalchemy", "asyncpg", "psycopg_pool", "pgwarden", "psycopg2", "django",
          "postgrest", "fixed", "nope"]

scalars = st.one_of(
    st.integers(min_value=-5, max_value=3_000_000),
    st.sampled_from([*_KINDS, "psycopg", "asyncpg", "psycopg2", "10%", "150%", "x"]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e7),
    st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
pool = st.dictionaries(st.sampled_from(_KEYS), values, max_size=5)
service = st.one_of(pool, st.fixed_dictionaries(
    {"pools": st.lists(pool, min_size=0, max_size=3)}, optional={"replicas": values}))
budget = st.fixed_dictionaries(
    {},
    optional={
        "server": st.dictionaries(
            st.sampled_from(["max_connections", "superuser_reserved_connections",
                             "reserved_connections", "headroom", "bogus"]), values, max_size=4),
        "services": st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
                                    service, max_size=4),
    },
)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else "0.0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml(data: dict[str, Any]) -> str:
    out = []
    if "server" in data:
        out.append("[server]")
        out += [f"{k} = {_scalar(v)}" for k, v in data["server"].items()]
    for name, svc in data.get("services", {}).items():
        out.append(f"[services.{name}]")
        for k, v in svc.items():
            if k == "pools" and isinstance(v, list) and all(isinstance(p, dict) for p in v):
                continue
            out.append(f"{k} = {_scalar(v)}")
        for p in svc.get("pools", []) if isinstance(svc.get("pools"), list) else []:
            if isinstance(p, dict):
                out.append(f"[[services.{name}.pools]]")
                out += [f"{k} = {_scalar(v)}" for k, v in p.items() if k != "pools"]
    return "\n".join(out) + "\n"


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_cli(capsys, "budget", str(path))
    assert r.code in DOCUMENTED, r
    assert "Traceback" not in r.out + r.err
    if r.code == 78:
        assert len(r.err.strip().splitlines()) == 1 and str(path) in r.err
    else:
        assert r.err == "" and "pgwarden budget" in r.out


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=budget)
def test_any_structured_budget(data: dict[str, Any], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "budget.toml"
    f.write_text(_toml(data))
    _check(f, capsys)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=200))
def test_any_bytes(raw: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "budget.toml"
    f.write_bytes(b"[server]\nmax_connections = 10\n" + raw)
    _check(f, capsys)
