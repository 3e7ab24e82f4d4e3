"""Read a budget file (TOML, through :mod:`tomllib`) into a :class:`~pgwarden.budget.model.Budget`.

Every key is documented in docs/budget.md. Every problem is a
:class:`~pgwarden.errors.ConfigFileError` naming the file and the dotted key
(``services.worker.pools[1].max_size``) and what is allowed; unknown keys are errors (a typo
must not silently budget a default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..configfile import TableReader, kind_of, load_toml
from .model import DEFAULTS, DRIVERS, KINDS, Budget, Pool, Service

__all__ = ["MAX_COUNT", "budget_from_dict", "load_budget"]

#: The largest count accepted anywhere (no server has a million slots; a typo might).
MAX_COUNT = 1_000_000

_TOP_KEYS = ("server", "services")
_SERVER_KEYS = ("max_connections", "superuser_reserved_connections", "reserved_connections",
                "headroom")
_SERVICE_KEYS = ("replicas", "processes", "weight", "applications", "database", "user",
                 "pools")
_POOL_KEYS = ("kind", "driver")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@/+-]{1,100}$")
#: Lowest value of each pool setting (SQLAlchemy's pool_size=0 and max_overflow=-1 mean "no
#: limit", which no budget can hold).
_MINIMUM = {"pool_size": 1, "max_overflow": 0, "min_size": 0, "max_size": 1, "minconn": 0,
            "maxconn": 1, "threads": 1, "db_pool": 1, "connections": 0}




class _Reader(TableReader):

    def count(self, value: object, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected a whole number >= {minimum}, got {kind_of(value)}")
        if not minimum <= value <= MAX_COUNT:
            raise self.fail(key, f"expected a whole number from {minimum} to {MAX_COUNT}, "
                            f"got {value}")
        return value

    def name(self, value: object, key: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise self.fail(key, "expected a name of 1-100 letters, digits or _.:@/+-, got "
                            f"{kind_of(value)}")
        return value

    def headroom(self, value: object, key: str) -> tuple[float, bool]:
        if isinstance(value, str):
            m = _PERCENT_RE.match(value)
            if m and float(m.group(1)) < 100:
                return float(m.group(1)) / 100.0, True
        elif isinstance(value, int) and not isinstance(value, bool) \
                and 0 <= value <= MAX_COUNT:
            return float(value), False
        raise self.fail(key, "expected a number of slots (like 5) or a percentage of the "
                        f"usable slots below 100% (like '10%'), got {kind_of(value)}")

    def pool(self, value: object, key: str) -> Pool:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table, got {kind_of(value)}")
        if "kind" not in value:
            raise self.fail(f"{key}.kind", f"missing; expected one of {', '.join(KINDS)}")
        kind = value["kind"]
        if kind not in DEFAULTS:
            raise self.fail(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got "
                            f"{kind_of(kind)}")
        defaults = DEFAULTS[kind]
        self.table(value, key, (*_POOL_KEYS, *defaults))
        settings: dict[str, int] = {}
        for name in defaults:
            if name in value:
                settings[name] = self.count(value[name], f"{key}.{name}", _MINIMUM[name])
        for name, default in defaults.items():
            if name in settings:
                continue
            if default is not None:
                settings[name] = default
            elif name == "max_size":  # psycopg_pool: max_size defaults to min_size
                settings[name] = max(1, settings["min_size"])
            else:
                raise self.fail(f"{key}.{name}", f"missing; a {kind} pool needs it")
        for low, high in (("min_size", "max_size"), ("minconn", "maxconn")):
            if low in settings and high in settings and settings[low] > settings[high]:
                given = "" if low in value else f" ({kind}'s default)"
                raise self.fail(f"{key}.{low}", f"must not exceed {high} ({settings[high]}), "
                                f"got {settings[low]}{given}; {kind} refuses it too")
        drivers = DRIVERS[kind]
        driver = value.get("driver", drivers[0])
        if driver not in drivers:
            raise self.fail(f"{key}.driver", f"expected one of {', '.join(drivers)} for a "
                            f"{kind} pool, got {kind_of(driver)}")
        return Pool(kind=kind, settings=settings, driver=driver)

    def service(self, name: str, value: object) -> Service:
        key = f"services.{name}"
        if not _NAME_RE.match(name):
            raise self.fail(key, "a service name is 1-100 letters, digits or _.:@/+-")
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table, got {kind_of(value)}")
        shorthand = "kind" in value
        pool_keys: tuple[str, ...] = ()
        if shorthand:
            kind = value["kind"]
            if kind in DEFAULTS:
                pool_keys = (*_POOL_KEYS, *DEFAULTS[kind])
            elif kind is not None:
                raise self.fail(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got "
                                f"{kind_of(kind)}")
            if "pools" in value:
                raise self.fail(f"{key}.pools", "give either kind = ... (one pool) or "
                                "[[services.NAME.pools]] tables, not both")
        t = self.table(value, key, (*_SERVICE_KEYS, *pool_keys))
        pools: tuple[Pool, ...]
        if shorthand:
            pools = (self.pool({k: v for k, v in t.items() if k in pool_keys}, key),)
        else:
            raw = t.get("pools")
            if raw is None:
                raise self.fail(f"{key}.pools", "missing; give kind = ... in the service "
                                "table, or one [[services.NAME.pools]] table per pool")
            if not isinstance(raw, list) or not raw:
                raise self.fail(f"{key}.pools", "expected a non-empty list of tables "
                                f"([[{key}.pools]]), got {kind_of(raw)}")
            pools = tuple(self.pool(p, f"{key}.pools[{i}]") for i, p in enumerate(raw))
        kwargs: dict[str, Any] = {}
        for opt in ("replicas", "processes"):
            if opt in t:
                kwargs[opt] = self.count(t[opt], f"{key}.{opt}", 1)
        if "weight" in t:
            w = t["weight"]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w <= MAX_COUNT:
                raise self.fail(f"{key}.weight", f"expected a number > 0, got {kind_of(w)}")
            kwargs["weight"] = float(w)
        if "applications" in t:
            apps = t["applications"]
            if isinstance(apps, str):
                apps = [apps]
            if isinstance(apps, list) and not apps:
                raise self.fail(f"{key}.applications", "the list is empty; give at least one "
                                "application_name pattern (like ['worker-*']), or leave the "
                                "key out to match the service's name")
            if not isinstance(apps, list) or not all(
                    isinstance(a, str) and 0 < len(a) <= 200 for a in apps):
                raise self.fail(f"{key}.applications", "expected an application_name pattern "
                                f"or a list of them (like ['worker-*']), got {kind_of(apps)}")
            kwargs["applications"] = tuple(apps)
        for opt in ("database", "user"):
            if opt in t:
                kwargs[opt] = self.name(t[opt], f"{key}.{opt}")
        service = Service(name=name, pools=pools, **kwargs)
        if service.worst_case > MAX_COUNT:
            raise self.fail(key, f"its worst case, replicas x processes x pools = "
                            f"{service.worst_case:,} connections, is more than "
                            f"{MAX_COUNT:,}: a typo?")
        return service

    def budget(self, data: object) -> Budget:
        t = self.table(data, "", _TOP_KEYS)
        kwargs: dict[str, Any] = {"path": self.path}
        if "server" in t:
            s = self.table(t["server"], "server", _SERVER_KEYS)
            if "max_connections" in s:
                kwargs["max_connections"] = self.count(s["max_connections"],
                                                       "server.max_connections", 1)
            for opt in ("superuser_reserved_connections", "reserved_connections"):
                if opt in s:
                    kwargs[opt] = self.count(s[opt], f"server.{opt}", 0)
            if "headroom" in s:
                kwargs["headroom"] = self.headroom(s["headroom"], "server.headroom")
                kwargs["headroom_set"] = True
            mc = kwargs.get("max_connections")
            su = kwargs.get("superuser_reserved_connections", 3)
            rc = kwargs.get("reserved_connections", 0)
            if mc is not None and su + rc >= mc:
                raise self.fail("server.superuser_reserved_connections",
                                f"superuser_reserved_connections ({su}) + reserved_connections "
                                f"({rc}) must be less than max_connections ({mc}); PostgreSQL "
                                "refuses to start otherwise")
        if "services" not in t or t["services"] == {}:
            raise self.fail("services", "no services declared: add one [services.NAME] table "
                            "per service (docs/budget.md); to only see who uses the server, "
                            "run `pgwarden budget --dsn DSN` without a file")
        services = t["services"]
        if not isinstance(services, Mapping):
            raise self.fail("services", "expected tables like [services.api], got "
                            f"{kind_of(services)}")
        kwargs["services"] = tuple(self.service(str(n), v) for n, v in services.items())
        total = sum(s.worst_case for s in kwargs["services"])
        if total > MAX_COUNT:
            raise self.fail("services", f"the services' worst cases add up to {total:,} "
                            f"connections, more than {MAX_COUNT:,}: a typo?")
        return Budget(**kwargs)


def budget_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Budget:
    """A :class:`Budget` from the parsed file format (what ``tomllib.load`` returns).

    Raises:
        ConfigFileError: a bad key or value; ``path`` is ``source``, ``key`` the dotted key.
    """
    return _Reader(source).budget(data)


def load_budget(path: str | os.PathLike[str]) -> Budget:
    """Read a budget file (format: docs/budget.md).

    Raises:
        ConfigFileError: unreadable, not TOML, or a bad key or value (names file and key).
    """
    path = str(path)
    return budget_from_dict(load_toml(path), source=path)
