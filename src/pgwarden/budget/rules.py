"""The budget's arithmetic: pure functions from a budget (and what a live server showed) to a
verdict, sizes that fit, and the PgBouncer sizing that fits when no pool sizes can.

- **Worst case** of a service: ``replicas x processes x`` the sum of its pools' worst cases
  (:mod:`pgwarden.budget.model`).
- **Available**: usable slots (``max_connections - superuser_reserved_connections -
  reserved_connections``) minus the headroom (default 10 % of the usable slots, rounded up:
  room for psql, monitoring, and the overlap of a rolling deploy).
- **Verdict**: the sum of worst cases over the available slots: ``fits`` up to 80 %, ``tight``
  up to 100 %, ``over`` beyond; exit codes 0 / 1 / 2, the doctor's ok / warning / critical
  (80 % is the doctor's saturation warning).
- **Suggested sizes** (when over): fixed consumers (``fixed``, Django's threads, sessions of
  applications no service declares, at their observed peak) keep their connections; the rest
  is shared by max-min fairness: each service gets up to its worst case, in proportion to its
  weight (its observed peak when sampled, else its ``weight``, else 1), never below one
  connection per pool per process. Services cut below their worst case **overflow**.
- **PgBouncer** (when even one connection per pool per process does not fit, and offered
  whenever the budget is over): the services keep their pools as client connections to
  PgBouncer (``max_client_conn``), and PgBouncer holds at most the available slots minus the
  fixed consumers as server connections (``max_db_connections``, ``default_pool_size`` +
  ``reserve_pool_size``), in transaction mode.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigFileError
from .model import Budget, Pool, ServerSlots, Service

__all__ = [
    "FITS_UNTIL",
    "VERDICTS",
    "BudgetReport",
    "Observation",
    "PgBouncerSizing",
    "PoolSuggestion",
    "ServiceLine",
    "evaluate",
    "match_service",
    "pgbouncer_sizing",
    "slots_for",
]

#: Usage of the available slots up to which a budget fits (the doctor's saturation warning).
FITS_UNTIL = 0.8
VERDICTS = ("fits", "tight", "over")
#: PgBouncer's default max_client_conn (pgbouncer(5)); never suggest fewer.
_PGBOUNCER_MIN_CLIENTS = 100


@dataclass(frozen=True, slots=True)
class Observation:
    """What a live server showed while sampling.

    Attributes:
        peaks: the most client sessions seen at once, per ``application_name``.
        total_peak: the most client sessions seen at once, all applications together.
        seconds: how long it sampled.
        polls: how many looks it took.
        hidden_peak: the most sessions seen at once whose details the role may not see
            (counted in ``peaks`` by their application_name).
        hint: what to do about them (``GRANT pg_monitor TO role;``), or ``""``.
    """

    peaks: Mapping[str, int] = field(default_factory=dict)
    total_peak: int = 0
    seconds: float = 0.0
    polls: int = 0
    hidden_peak: int = 0
    hint: str = ""


@dataclass(frozen=True, slots=True)
class PoolSuggestion:
    """One pool's settings now and the settings that fit."""

    kind: str
    driver: str
    current: Mapping[str, int]
    suggested: Mapping[str, int]

    def describe(self) -> str:
        """``sqlalchemy pool_size=3 max_overflow=6``."""
        return f"{self.kind} " + " ".join(f"{k}={v}" for k, v in self.suggested.items())


@dataclass(frozen=True, slots=True)
class ServiceLine:
    """One service in the report.

    Attributes:
        worst_case: replicas x processes x per_process.
        observed_peak: its sessions' peak while sampling (``None``: not sampled).
        allocated: the connections it gets in the suggested sizing (its worst case when
            nothing needs to change).
        overflows: the budget is over and this service is cut below its worst case.
        suggestions: per pool, the settings that fit (empty when nothing changes).
        declared: ``False`` for an application seen on the server that no service declares.
    """

    name: str
    pools: tuple[Pool, ...]
    replicas: int
    processes: int
    per_process: int
    worst_case: int
    fixed: bool
    observed_peak: int | None
    allocated: int
    overflows: bool
    suggestions: tuple[PoolSuggestion, ...] = ()
    declared: bool = True


@dataclass(frozen=True, slots=True)
class PgBouncerSizing:
    """A transaction-mode PgBouncer that fits (pgbouncer(5) names).

    Attributes:
        server_slots: server connections PgBouncer may hold in all (available slots minus the
            consumers that stay direct: fixed ones and undeclared applications).
        databases: per database, its pool size (``pool_size`` in ``[databases]``) and the cap
            over all its users (``max_db_connections``).
        default_pool_size, reserve_pool_size: per (database, user) pool.
        max_client_conn: the services' pools together, plus room for monitoring.
        fits: ``server_slots`` is at least one connection per database.
    """

    server_slots: int
    databases: Mapping[str, int]
    default_pool_size: int
    reserve_pool_size: int
    max_db_connections: int
    max_client_conn: int
    client_connections: int
    pool_mode: str = "transaction"
    fits: bool = True


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """The verdict and everything behind it (JSON shape: docs/budget.md)."""

    slots: ServerSlots
    services: tuple[ServiceLine, ...]
    total_worst_case: int
    fixed_total: int
    verdict: str
    sizing_fits: bool
    pgbouncer: PgBouncerSizing
    observation: Observation | None = None
    source: str = ""

    @property
    def usage(self) -> float:
        """The sum of worst cases over the available slots (may exceed 1)."""
        return (self.total_worst_case / self.slots.available if self.slots.available
                else math.inf)

    @property
    def overflowing(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services if s.overflows)

    @property
    def status(self) -> str:
        """``ok``, ``warning`` or ``critical`` (the CLI's exit codes 0, 1, 2)."""
        return {"fits": "ok", "tight": "warning", "over": "critical"}[self.verdict]


def slots_for(budget: Budget, *, max_connections: int | None = None,
              superuser_reserved_connections: int | None = None,
              reserved_connections: int | None = None, source: str = "file") -> ServerSlots:
    """The server's slots: from a live server where given, else from the budget file, with the
    file's headroom turned into slots.

    Raises:
        ConfigFileError: neither the file nor a server gives max_connections, or the file's
            headroom leaves no slot available (names the file and the key).
    """
    mc = max_connections if max_connections is not None else budget.max_connections
    if mc is None:
        raise ConfigFileError(
            f"{budget.path}: key 'server.max_connections': missing; give it in the budget "
            "file, or --dsn DSN to read it from the server",
            path=budget.path, key="server.max_connections")
    su = (superuser_reserved_connections if superuser_reserved_connections is not None
          else budget.superuser_reserved_connections)
    rc = reserved_connections if reserved_connections is not None else budget.reserved_connections
    usable = max(0, mc - su - rc)
    value, fraction = budget.headroom
    headroom = math.ceil(usable * value - 1e-9) if fraction else int(value)
    if budget.headroom_set and headroom >= usable:
        given = f"'{value * 100:g}%'" if fraction else f"{int(value)}"
        of = f" ({headroom} slots)" if fraction else ""
        raise ConfigFileError(
            f"{budget.path}: key 'server.headroom': {given}{of} of the {usable} usable slots "
            f"({'the server' if source == 'server' else 'the file'}: max_connections {mc} - "
            f"reserved {su + rc}) leaves none available for the services; give a smaller "
            "headroom (like '10%' or 5)", path=budget.path, key="server.headroom")
    return ServerSlots(max_connections=mc, superuser_reserved_connections=su,
                       reserved_connections=rc, headroom=min(headroom, usable), source=source)


def match_service(application: str, services: tuple[Service, ...]) -> Service | None:
    """The first service whose ``applications`` patterns (fnmatch, case-sensitive) match."""
    for s in services:
        if any(fnmatch.fnmatchcase(application, p) for p in s.patterns):
            return s
    return None


def _observed(budget: Budget, obs: Observation | None
              ) -> tuple[dict[str, int], dict[str, int]]:
    """Observed peaks per declared service (summed over its applications) and the peaks of
    applications no service declares (pgwarden's own sessions left out)."""
    per_service: dict[str, int] = {}
    undeclared: dict[str, int] = {}
    if obs is None:
        return per_service, undeclared
    for app, peak in obs.peaks.items():
        if app.startswith("pgwarden-"):
            continue
        s = match_service(app, budget.services)
        if s is None:
            undeclared[app or "(no application_name)"] = peak
        else:
            per_service[s.name] = per_service.get(s.name, 0) + peak
    return per_service, undeclared


def _waterfill(floors: list[int], caps: list[int], weights: list[float], total: int
               ) -> list[int]:
    """Max-min fair shares: ``clamp(l * w, floor, cap)`` with ``l`` such that they sum to
    ``total`` (floors summing to at most ``total``), rounded down."""
    if sum(caps) <= total:
        return list(caps)
    lo, hi = 0.0, max(c / w for c, w in zip(caps, weights, strict=True)) + 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        got = sum(min(c, max(f, mid * w)) for f, c, w in zip(floors, caps, weights,
                                                            strict=True))
        lo, hi = (mid, hi) if got <= total else (lo, mid)
    shares = [math.floor(min(c, max(f, lo * w)) + 1e-9)
              for f, c, w in zip(floors, caps, weights, strict=True)]
    return [max(f, s) for f, s in zip(floors, shares, strict=True)]


def _split(per_process: int, pools: tuple[Pool, ...]) -> list[int]:
    """Divide one process's connections over its pools: the fixed ones keep theirs, the rest
    is shared in proportion to the pools' worst cases, at least one each (largest remainder)."""
    fixed = sum(p.worst_case for p in pools if not p.shrinkable)
    resizable = [i for i, p in enumerate(pools) if p.shrinkable]
    out = [p.worst_case for p in pools]
    room = max(len(resizable), per_process - fixed)
    weights = [pools[i].worst_case for i in resizable]
    wsum = sum(weights) or 1
    exact = [room * w / wsum for w in weights]
    sizes = [max(1, int(x)) for x in exact]
    order = sorted(range(len(resizable)), key=lambda k: -(exact[k] - int(exact[k])))
    k = 0
    while sum(sizes) < room and order:
        sizes[order[k % len(order)]] += 1
        k += 1
    while sum(sizes) > room:
        j = max(range(len(sizes)), key=lambda x: sizes[x])
        if sizes[j] <= 1:
            break
        sizes[j] -= 1
    for i, size in zip(resizable, sizes, strict=True):
        out[i] = min(size, pools[i].worst_case)
    return out


def _settings_for(pool: Pool, size: int) -> dict[str, int]:
    """``pool``'s own settings for a worst case of ``size`` connections per process."""
    s = dict(pool.settings)
    if pool.kind == "sqlalchemy":
        total = s["pool_size"] + s["max_overflow"]
        base = max(1, min(size, round(size * s["pool_size"] / total))) if total else size
        return {"pool_size": base, "max_overflow": size - base}
    if pool.kind in ("asyncpg", "psycopg_pool", "pgwarden"):
        return {"min_size": min(s["min_size"], size), "max_size": size}
    if pool.kind == "psycopg2":
        return {"minconn": min(s["minconn"], size), "maxconn": size}
    if pool.kind == "postgrest":
        return {"db_pool": size}
    return s


def pgbouncer_sizing(budget: Budget, slots: ServerSlots, *, direct: int = 0,
                     default_database: str = "postgres") -> PgBouncerSizing:
    """Size a transaction-mode PgBouncer for ``budget``'s services (all but the fixed ones).

    Args:
        direct: connections that stay direct to PostgreSQL (fixed consumers, undeclared
            applications); PgBouncer gets the available slots minus these.
        default_database: the database of services that name none.
    """
    pooled = [s for s in budget.services if not s.fixed]
    server_slots = max(0, slots.available - direct)
    demand: dict[str, int] = {}
    for s in pooled:
        db = s.database or default_database
        demand[db] = demand.get(db, 0) + s.worst_case
    names = sorted(demand) or [default_database]
    if not demand:
        demand = {default_database: 1}
    shares = _waterfill([1] * len(names), [max(1, demand[n]) for n in names],
                        [float(max(1, demand[n])) for n in names], server_slots) \
        if server_slots >= len(names) else [0] * len(names)
    databases = dict(zip(names, shares, strict=True))
    biggest = max(shares) if shares else 0
    reserve = min(5, biggest // 10)
    clients = sum(s.worst_case for s in pooled)
    max_client = max(_PGBOUNCER_MIN_CLIENTS, math.ceil((clients + 10) / 10.0) * 10)
    return PgBouncerSizing(
        server_slots=server_slots,
        databases=databases,
        default_pool_size=max(1, biggest - reserve),
        reserve_pool_size=reserve,
        max_db_connections=max(1, biggest),
        max_client_conn=max_client,
        client_connections=clients,
        fits=server_slots >= len(names),
    )


def evaluate(budget: Budget, slots: ServerSlots, observation: Observation | None = None,
             *, default_database: str = "postgres", source: str = "") -> BudgetReport:
    """Judge ``budget`` against ``slots`` (and what ``observation`` saw).

    Returns:
        A :class:`BudgetReport`: the verdict, each service's worst case and suggested sizes,
        and the PgBouncer sizing.
    """
    by_service, undeclared = _observed(budget, observation)
    sampled = observation is not None
    services = budget.services
    fixed = [s for s in services if s.fixed]
    sized = [s for s in services if not s.fixed]
    direct = sum(s.worst_case for s in fixed) + sum(undeclared.values())
    total = sum(s.worst_case for s in services) + sum(undeclared.values())
    available = slots.available
    usage = total / available if available else math.inf
    verdict = "fits" if usage <= FITS_UNTIL else "tight" if usage <= 1.0 else "over"
    room = available - direct
    floors = [s.minimum for s in sized]
    sizing_fits = sum(floors) <= room
    allocation = {s.name: s.worst_case for s in services}
    if verdict == "over" and sized and sizing_fits:
        weights = [float(max(1, by_service.get(s.name, 0))) if sampled
                   else (s.weight or 1.0) for s in sized]
        shares = _waterfill(floors, [s.worst_case for s in sized], weights, room)
        allocation.update({s.name: a for s, a in zip(sized, shares, strict=True)})
    lines = []
    for s in services:
        got = allocation[s.name]
        overflows = verdict == "over" and (got < s.worst_case or (not sizing_fits
                                                                  and not s.fixed))
        suggestions: tuple[PoolSuggestion, ...] = ()
        if verdict == "over" and sizing_fits and got < s.worst_case:
            per_process = got // s.copies
            sizes = _split(per_process, s.pools)
            suggestions = tuple(
                PoolSuggestion(kind=p.kind, driver=p.driver, current=dict(p.settings),
                               suggested=_settings_for(p, n))
                for p, n in zip(s.pools, sizes, strict=True) if p.shrinkable)
            got = s.copies * sum(sizes)
        lines.append(ServiceLine(
            name=s.name, pools=s.pools, replicas=s.replicas, processes=s.processes,
            per_process=s.per_process, worst_case=s.worst_case, fixed=s.fixed,
            observed_peak=by_service.get(s.name, 0) if sampled else None,
            allocated=got, overflows=overflows, suggestions=suggestions))
    for app, peak in sorted(undeclared.items(), key=lambda kv: -kv[1]):
        lines.append(ServiceLine(
            name=app, pools=(), replicas=1, processes=1, per_process=peak, worst_case=peak,
            fixed=True, observed_peak=peak, allocated=peak, overflows=False, declared=False))
    return BudgetReport(
        slots=slots,
        services=tuple(lines),
        total_worst_case=total,
        fixed_total=direct,
        verdict=verdict,
        sizing_fits=sizing_fits,
        pgbouncer=pgbouncer_sizing(budget, slots, direct=direct,
                                   default_database=default_database),
        observation=observation,
        source=source,
    )
