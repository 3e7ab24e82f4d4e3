"""The I/O-free core of pgwarden's pools.

Every rule is written here once: configuration and its validation, connection defaults, the
validation window, generations, the reconnect cadence, growing, reset-on-return rules, the
read-only COMMIT rule, stats and the text of the timeout error. Holders, leaks, counters and
timings live in the pool's :class:`~pgwarden.observe.Tracker`. The pool itself
(``_async/pool.py``, and ``_sync/pool.py`` generated from it) only waits, locks and does I/O;
it calls the methods that change state with its lock held.
"""

from __future__ import annotations

import ast
import logging
import os
import random
import select
import sys
import weakref
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from ..conninfo import check_values, redact
from ..diagnose import classify
from ..errors import ConfigError, PoolTimeout
from ..observe import Holder, RawStack, Sizes, TrackedConnection, Tracker
from ..observe.holders import format_location, holder_name
from ..pgbouncer import detect
from ..pgbouncer.detect import Pooler

logger = logging.getLogger("pgwarden.pool")

TS = pq.TransactionStatus
CONN_OK = pq.ConnStatus.OK

#: Seconds since last use under which a checkout skips the validation round trip
#: (HikariCP skips it for 500 ms; we check the socket for pending data on *every* checkout,
#: which catches everything the server told us about, so the round trip only has to cover silent
#: peer loss: 2 s).
DEFAULT_VALIDATION_WINDOW = 2.0
#: Seconds a validation round trip may take before the connection is declared dead
#: (HikariCP's ``validationTimeout`` default is 5 s).
DEFAULT_VALIDATION_TIMEOUT = 5.0

#: Reconnect cadence while callers wait and the server refuses: uniform jitter in this range
#: between the starts of two attempts, one attempt in flight at a time -> at most 100 attempts/s
#: per pool, 40/s on average (psycopg_pool: 1 s doubling; HikariCP: 250 ms fixed).
FAST_RETRY_MIN = 0.010
FAST_RETRY_MAX = 0.040
#: Reconnect cadence with nobody waiting: half the outage's length so far, from 0.5 s to 10 s,
#: jittered +-25% (so it grows about as an exponential backoff does, whatever the number of
#: attempts the fast cadence made while callers waited).
SLOW_RETRY_BASE = 0.5
SLOW_RETRY_MAX = 10.0
#: After "too many clients" (SQLSTATE 53300, or PostgreSQL's "remaining connection slots are
#: reserved" for an ordinary role) the pool keeps one attempt in flight this often (+-25 %),
#: whether callers wait or not, and grows again as soon as one succeeds.
FULL_RETRY = 1.0
#: While the server rejects the pool (a wrong password, a missing role or database, pg_hba.conf)
#: retrying fast cannot help: one attempt after this many seconds, doubling up to
#: REJECTED_RETRY_MAX, waiting callers or not (+-25 %).
REJECTED_RETRY = 2.0
REJECTED_RETRY_MAX = 30.0
#: An attempt in flight this long without an answer is reported as "no answer" (the server is
#: down or unreachable, or something in front of it accepts connections and never answers).
NO_ANSWER_AFTER = 1.0

_TX_STATE = {
    TS.IDLE: "idle",
    TS.ACTIVE: "active",
    TS.INTRANS: "idle in transaction",
    TS.INERROR: "idle in transaction (aborted)",
    TS.UNKNOWN: "broken",
}

#: Connection defaults applied where the DSN, ``kwargs`` and the PG* environment set none.
#: Keepalives: an idle dead peer is noticed after 10 + 3 * 5 = 25 s; tcp_user_timeout: unacked
#: data for 20 s drops the connection (libpq defaults: the kernel's, ~2 h 11 min).
TCP_DEFAULTS: dict[str, str] = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
    "connect_timeout": "5",
}
_ENV_FOR = {
    "keepalives": None,
    "keepalives_idle": None,
    "keepalives_interval": None,
    "keepalives_count": None,
    "tcp_user_timeout": None,
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
}


def default_application_name() -> str:
    """``$PGWARDEN_APPLICATION_NAME``, else ``<script name>-<pid>`` (63 bytes at most)."""
    env = os.environ.get("PGWARDEN_APPLICATION_NAME")
    if env:
        return env[:63]
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if script.endswith(".py"):
        script = script[:-3]
    if script in ("", "-c", "-m", "__main__"):
        script = "python"
    suffix = f"-{os.getpid()}"
    return script[: 63 - len(suffix)] + suffix


def connection_defaults(conninfo: str, kwargs: dict[str, Any]) -> dict[str, str]:
    """The default conninfo parameters to add: those set neither in ``conninfo``, ``kwargs``
    nor the PG* environment."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise ConfigError(f"malformed conninfo {redact(conninfo)!r}: {exc}") from None
    out: dict[str, str] = {}
    for key, value in {**TCP_DEFAULTS, "application_name": ""}.items():
        if key in given or key in kwargs:
            continue
        env = _ENV_FOR.get(key)
        if env and os.environ.get(env):
            continue
        out[key] = value
    return out


def static_defaults(config: Config) -> dict[str, str] | None:
    """Defaults computed once, or ``None`` when conninfo/kwargs are callables (per connect)."""
    if not config.connection_defaults:
        return {}
    if callable(config.conninfo) or callable(config.kwargs):
        return None
    return connection_defaults(config.conninfo, config.kwargs or {})


def connect_params(conninfo: str, kwargs: dict[str, Any] | None,
                   defaults: dict[str, str] | None, config: Config,
                   pooler_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``connect()``: ``kwargs`` plus the defaults they lack, plus what
    the driver needs behind the pooler (``pooler_kw``, :meth:`Core.detected`) where
    ``kwargs`` do not say otherwise."""
    kwargs = kwargs or {}
    kw = dict(kwargs)
    if defaults is None:
        defaults = connection_defaults(conninfo, kwargs) if config.connection_defaults else {}
    if "application_name" in defaults:
        defaults = {**defaults, "application_name": default_application_name()}
    kw.update(defaults)
    if pooler_kw:
        for key, value in pooler_kw.items():
            kw.setdefault(key, value)
    return kw


# -- behind PgBouncer ----------------------------------------------------------------------

#: The uptime probe of a replay behind a pooler: seconds since the postmaster started, at the
#: instant the server ran the query (PostgreSQL docs, "Session Information Functions":
#: ``pg_postmaster_start_time()``; "Date/Time Functions": ``statement_timestamp()``).
UPTIME_QUERY = (b"select extract(epoch from statement_timestamp() - pg_postmaster_start_time())"
                b"::float8")


def pooler_kwargs(pooler: Pooler, libpq_version: int) -> dict[str, Any]:
    """The psycopg connection parameters behind ``pooler``: the settings
    :meth:`~pgwarden.pgbouncer.detect.Pooler.advice` gives for ``psycopg``
    (``prepare_threshold=None`` unless PgBouncer >= 1.22 tracks prepared statements;
    ``prepared_max=None`` there with a libpq older than 17), as Python values."""
    adv = pooler.advice("psycopg", libpq_version=libpq_version)
    return {s.name: ast.literal_eval(s.value) for s in adv.settings}


def restarted_since(uptime: float, held_for: float) -> bool:
    """Behind a pooler, whether PostgreSQL restarted while a statement ran: its uptime
    (:data:`UPTIME_QUERY`, seconds) is shorter than the time since the connection was checked
    out (the statement was sent after the checkout and the restart killed it). A session
    ended by ``pg_terminate_backend`` on a server up for longer is not a restart. A restart
    right before the checkout followed by a ``pg_terminate_backend`` is indistinguishable from
    one during the statement (docs/pgbouncer.md, "Pools behind PgBouncer")."""
    return uptime < held_for


def uptime_probe(pgconn: Any) -> Generator[int, None, float]:
    """Send :data:`UPTIME_QUERY` and read its answer; yields WAIT_R/WAIT_W while the socket
    must be waited on; returns the server's uptime in seconds.

    Raises:
        ProbeFailed: the pooler or the server answered with an error (PgBouncer's ``server
            login has been failing``, ``query_wait_timeout``, a shutdown's 57P01 ...).
    """
    if pgconn.status != CONN_OK:
        raise ProbeFailed("connection is closed")
    value: float | None = None
    error = ""
    for res in (yield from _round_trip(pgconn, UPTIME_QUERY)):
        if res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1:
            raw = res.get_value(0, 0)
            value = float(raw) if raw is not None else None
        else:
            error = res.error_message.decode(errors="replace").strip() or str(res.status)
    if value is None:
        raise ProbeFailed(error or "no answer to the uptime query")
    return value


def log_detected(pool_name: str, pooler: Pooler, kw: dict[str, Any],
                 given: dict[str, Any] | None) -> None:
    """One line when the pool finds out what it talks to (INFO behind a pooler, DEBUG for a
    direct connection); a WARNING when the pool's ``kwargs`` keep a setting the pooler
    breaks."""
    if not pooler.behind:
        logger.debug("pool %r: %s (%s)", pool_name, pooler.describe(), pooler.evidence)
        return
    settings = ", ".join(f"{k}={v!r}" for k, v in kw.items()) or "nothing changed"
    logger.info("pool %r: behind %s (%s); connections get: %s", pool_name, pooler.describe(),
                pooler.evidence, settings)
    for key, value in kw.items():
        if given and key in given and given[key] != value:
            logger.warning(
                "pool %r: behind %s, but its kwargs set %s=%r: statements will fail with "
                "'prepared statement \"_pg3_0\" does not exist' or '... already exists'; "
                "remove it (the pool sets %s=%r) or pass pgbouncer=False if this is wrong",
                pool_name, pooler.describe(), key, given[key], key, value)


def tx_state(conn: Any) -> str:
    try:
        return _TX_STATE.get(conn.pgconn.transaction_status, "broken")
    except Exception:
        return "broken"


#: SQLSTATEs of the server ending a session on its own: admin_shutdown (a shutdown, or
#: pg_terminate_backend) and crash_shutdown (PostgreSQL docs, Appendix A, class 57)
SESSION_ENDED = frozenset({"57P01", "57P02"})


def ended_by_server(exc: BaseException, conn: Any) -> bool:
    """Whether a statement failed because the server ended the session (57P01, 57P02, or the
    connection was lost with no message), not because of the statement."""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate in SESSION_ENDED
    return isinstance(exc, psycopg.OperationalError) and conn.pgconn.status != CONN_OK


def going_down(exc: BaseException) -> str | None:
    """Why the server is going down, if a connection attempt failed with ``exc`` because it is
    shutting down, starting up or in recovery (57P03) or cannot be reached; None if it refused
    this client (a bad password, too many clients, ...) or if ``exc`` is not a connection error.
    The meaning comes from :func:`pgwarden.diagnose.classify`."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    kind = classify(exc, connecting=True).kind
    return _first_line(exc) if kind in ("going_down", "unreachable") else None


def log_replayed(pool_name: str, old: Slot, new: Slot, why: str) -> None:
    logger.info(
        "pool %r: the server ended connection pid %d during the first statement after checkout "
        "by %s at %s and is going down (%s); ran the statement again on connection pid %d "
        "(it had opened its own transaction, so nothing was committed)", pool_name, old.pid,
        holder_name(old.holder), format_location(old.stack), why, new.pid)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    if isinstance(exc, psycopg.Error):
        return text or type(exc).__name__
    # not the server's or libpq's: code that ran on the new connection (``configure``,
    # ``reset``...) failed; its type says more than its text (a KeyError's "0")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_seconds(name: str, value: float | None, *, allow_none: bool = False,
                   allow_zero: bool = False) -> None:
    if value is None:
        if allow_none:
            return
        raise ConfigError(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")


def check_sizes(min_size: int, max_size: int | None) -> tuple[int, int]:
    """Validate ``min_size``/``max_size`` (psycopg_pool rules: ``max_size`` defaults to
    ``min_size``, ``0 <= min_size <= max_size``, ``max_size > 0``)."""
    if max_size is None:
        max_size = min_size
    for label, v in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{label} must be an int, got {v!r}")
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size}")
    if max_size < min_size:
        raise ConfigError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    if max_size == 0:
        raise ConfigError("max_size must be > 0")
    return min_size, max_size


@dataclass(slots=True)
class Config:
    """Validated pool settings (see :class:`pgwarden.pool.ConnectionPool` for each)."""

    conninfo: Any  # str, or a callable returning one (psycopg_pool 3.3)
    kwargs: Any  # dict, None, or a callable returning a dict
    min_size: int
    max_size: int
    name: str
    timeout: float
    max_waiting: int
    max_lifetime: float
    max_idle: float
    reconnect_timeout: float
    num_workers: int
    leak_threshold: float | None
    validation_window: float
    validation_timeout: float
    connection_defaults: bool
    #: what sits between the pool and PostgreSQL when told (``None``: detect)
    pgbouncer: Pooler | None = None


_num_pool = 0


def make_config(
    *,
    conninfo: Any,
    kwargs: Any,
    min_size: int,
    max_size: int | None,
    name: str | None,
    timeout: float,
    max_waiting: int,
    max_lifetime: float,
    max_idle: float,
    reconnect_timeout: float,
    num_workers: int,
    leak_threshold: float | None,
    validation_window: float,
    validation_timeout: float,
    connection_defaults: bool,
    pgbouncer: Any = None,
) -> Config:
    global _num_pool
    try:
        told = detect.coerce(pgbouncer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    min_size, max_size = check_sizes(min_size, max_size)
    if not isinstance(conninfo, str) and not callable(conninfo):
        raise ConfigError("conninfo must be a string (a postgresql:// URL or key=value pairs) "
                          "or a callable returning one")
    if kwargs is not None and not isinstance(kwargs, dict) and not callable(kwargs):
        raise ConfigError("kwargs must be a dict or a callable returning one")
    if isinstance(conninfo, str):
        try:
            check_values(conninfo_to_dict(conninfo), "the pool's conninfo")
        except psycopg.Error as exc:
            raise ConfigError(f"malformed conninfo {redact(conninfo)!r}: {exc}") from None
    if isinstance(kwargs, dict):
        check_values(kwargs, "the pool's kwargs")
    _check_seconds("timeout", timeout)
    _check_seconds("max_lifetime", max_lifetime)
    _check_seconds("max_idle", max_idle)
    _check_seconds("reconnect_timeout", reconnect_timeout)
    _check_seconds("leak_threshold", leak_threshold, allow_none=True)
    _check_seconds("validation_window", validation_window, allow_zero=True)
    _check_seconds("validation_timeout", validation_timeout)
    if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
        raise ConfigError(f"max_waiting must be an int >= 0 (0: unbounded), got {max_waiting!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if not name:  # None or "" (as psycopg_pool)
        _num_pool += 1
        name = f"pool-{_num_pool}"
    return Config(
        conninfo=conninfo,
        kwargs=kwargs if callable(kwargs) or kwargs is None else dict(kwargs),
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=float(timeout),
        max_waiting=max_waiting,
        max_lifetime=float(max_lifetime),
        max_idle=float(max_idle),
        reconnect_timeout=float(reconnect_timeout),
        num_workers=num_workers,
        leak_threshold=None if not leak_threshold else float(leak_threshold),
        validation_window=float(validation_window),
        validation_timeout=float(validation_timeout),
        connection_defaults=connection_defaults,
        pgbouncer=told,
    )


class ConnRef(weakref.ref):  # type: ignore[type-arg]
    """Weak reference to a connection of the pool that knows its slot (for GC reclaim)."""

    __slots__ = ("slot",)
    slot: Slot


class Slot(TrackedConnection):
    """One connection the pool owns: the tracker's record plus the pool's own state.
    ``conn`` is a strong reference only while idle (a checked-out connection the application
    drops is garbage-collected, and reclaimed through :attr:`ref`)."""

    __slots__ = ("conn", "dead", "expire_at", "gen", "last_used", "poller", "ref")

    def __init__(self, conn: Any, gen: int, now: float, expire_at: float) -> None:
        super().__init__(conn.pgconn.backend_pid, None, now)
        self.conn: Any = conn
        self.ref: ConnRef | None = None
        # one poll object per connection: the per-checkout "did the server say something?"
        # check is then a single syscall
        self.poller = select.poll()
        self.poller.register(conn.pgconn.socket, select.POLLIN)
        self.gen = gen
        self.expire_at = expire_at
        self.last_used = now
        self.dead = False


def _slot_state(slot: TrackedConnection) -> str:
    ref = slot.ref if isinstance(slot, Slot) else None
    conn = ref() if ref is not None else None
    return tx_state(conn) if conn is not None else "broken"


class Stats:
    """The pool's own counters (the tracker keeps the holders', the requests' and the
    connections'); :meth:`Core.get_stats` merges both under psycopg_pool's key names."""

    __slots__ = (
        "commits_read_only", "connections_lost", "generations_invalidated", "returns_bad",
        "returns_rolled_back", "statements_replayed", "validations_failed", "validations_num",
    )

    def __init__(self) -> None:
        self.commits_read_only = 0
        self.connections_lost = 0
        self.generations_invalidated = 0
        self.returns_bad = 0
        self.returns_rolled_back = 0
        self.statements_replayed = 0
        self.validations_failed = 0
        self.validations_num = 0


class Core:
    """Pool state and every decision about it (no I/O, no waiting). Methods that change
    state are called with the pool's lock held."""

    def __init__(self, config: Config, pool: Any) -> None:
        self.config = config
        self.pool_ref = weakref.ref(pool)
        self.idle: list[Slot] = []  # LIFO: the most recently used connection is reused first
        self.slots: set[Slot] = set()  # every open connection (idle and checked out)
        self.waiters: deque[Any] = deque()
        self.size = 0  # open connections: idle + checked out
        self.connecting = 0
        self.gen = 0
        self.drain_gen = 0
        self.stats = Stats()
        self.gc_queue: deque[Slot] = deque()
        self.tracker = Tracker(config.name, library="pgwarden",
                               leak_threshold=config.leak_threshold, sizes=self.sizes,
                               state_of=_slot_state)
        # the pool changes its tracker under its own lock: readers in other threads (the
        # metrics collector, the holders endpoint) take it as Tracker.lock
        self.tracker.lock = pool._lock
        # reconnect state
        self.failures = 0
        self.first_failure_at = 0.0
        self.last_attempt_at = 0.0
        self.last_error: str | None = None
        #: what the failing attempts mean (pgwarden.diagnose.KINDS), None while connecting works
        self.failure_kind: str | None = None
        self.lifetime_jitter = 0.1
        #: what sits between the pool and PostgreSQL (told, or detected on the first
        #: connection; ``None`` until then) and the connection parameters that follow from it
        self.pooler: Pooler | None = config.pgbouncer
        self.pooler_kw: dict[str, Any] = (
            pooler_kwargs(config.pgbouncer, pq.version()) if config.pgbouncer else {})
        if config.pgbouncer is not None:
            given = config.kwargs if isinstance(config.kwargs, dict) else None
            log_detected(config.name, config.pgbouncer, self.pooler_kw, given)

    @property
    def server_full(self) -> bool:
        """The last attempts failed for lack of a slot on the server."""
        return self.failure_kind == "server_full"

    def sizes(self) -> Sizes:
        cfg = self.config
        idle = len(self.idle)
        return Sizes(open=self.size, idle=idle, in_use=self.size - idle, min_size=cfg.min_size,
                     max_size=cfg.max_size)

    def target(self) -> str:
        c = self.config.conninfo
        return redact(c) if isinstance(c, str) else "<conninfo callable>"

    def expire_at(self, now: float) -> float:
        """max_lifetime minus up to 10 % jitter (psycopg_pool: 5 %), so a pool filled at once
        does not expire at once."""
        return now + self.config.max_lifetime * (1.0 - random.uniform(0, self.lifetime_jitter))

    # -- growing ----------------------------------------------------------------------------

    def _wanted(self) -> int:
        """Connections wanted now: up to ``min_size``, plus one more while callers wait (the
        pool grows one connection at a time, as psycopg_pool, so a burst of short requests is
        served by the connections coming back, not by opening ``max_size``)."""
        return max(self.config.min_size - self.size, 1 if self.waiters else 0)

    def to_start(self, now: float) -> int:
        """How many connection attempts to start now (``connecting`` is incremented; the
        shell must start them)."""
        cfg = self.config
        want = self._wanted() - self.connecting
        if want <= 0:
            return 0
        room = cfg.max_size - self.size - self.connecting
        # while the server refuses, and until the first connection told what is in between
        # (the pooler's settings must be known before more connections open): one in flight
        one = self.failures or self.pooler is None
        in_flight = (1 if one else cfg.num_workers) - self.connecting
        n = max(0, min(want, room, in_flight))
        self.connecting += n
        return n

    def still_wanted(self) -> bool:
        """Whether a connection attempt that is about to start (or retry) is still needed."""
        return self._wanted() > 0 and self.size < self.config.max_size

    def retry_delay(self, now: float) -> float:
        """Seconds to wait before the next connection attempt (0 when healthy). The cadence
        depends on what the failures mean (:func:`pgwarden.diagnose.classify`): a full server
        about once a second, a rejected client slowly, an unreachable server fast while callers
        wait (it may be back any moment) and with backoff otherwise."""
        if not self.failures:
            return 0.0
        kind = self.failure_kind
        if kind == "server_full":
            d = FULL_RETRY * random.uniform(0.75, 1.25)
        elif kind in ("rejected", "invalid", "client"):
            d = min(REJECTED_RETRY_MAX, REJECTED_RETRY * 2 ** min(self.failures - 1, 10))
            d *= random.uniform(0.75, 1.25)
        elif self.waiters:
            d = random.uniform(FAST_RETRY_MIN, FAST_RETRY_MAX)
        else:
            # nobody waits: back off with the outage's length (half of it so far), not with the
            # number of attempts, which the fast cadence inflated while callers waited
            d = min(SLOW_RETRY_MAX, max(SLOW_RETRY_BASE, (now - self.first_failure_at) / 2))
            d *= random.uniform(0.75, 1.25)
        return max(0.0, self.last_attempt_at + d - now)

    def connect_started(self, now: float) -> None:
        self.last_attempt_at = now

    def connect_failed(self, exc: BaseException, now: float) -> bool:
        """Record a failed attempt; return True when ``reconnect_failed`` should be called."""
        self.tracker.connect_failed()
        if not self.failures:
            self.first_failure_at = now
        self.failures += 1
        self.last_error = _first_line(exc)
        kind = classify(exc, connecting=True).kind
        if kind != self.failure_kind:
            self.failure_kind = kind
            name = self.config.name
            if kind == "server_full":
                logger.warning(
                    "pool %r: the server has no free connection slot (%s); %d connections "
                    "open, retrying about once a second", name, self.last_error, self.size)
            elif kind in ("rejected", "invalid"):
                logger.warning(
                    "pool %r: the server rejects the connection (%s to %s); retrying every "
                    "%g s or more, not faster: fix the credentials or the DSN", name,
                    self.last_error, self.target(), REJECTED_RETRY)
            elif kind == "client":
                logger.warning(
                    "pool %r: a new connection was opened, then code run on it failed (%s; "
                    "configure=, a connection_class or pgwarden itself: traceback below); "
                    "retrying every %g s or more", name, self.last_error, REJECTED_RETRY,
                    exc_info=exc)
            else:
                logger.warning("pool %r: connection attempt failed (%s to %s); retrying",
                               name, self.last_error, self.target())
        if now - self.first_failure_at >= self.config.reconnect_timeout:
            # psycopg_pool's documented default: reconnect_failed is told, and a new round of
            # attempts starts (backoff from the start), so the pool comes back by itself
            self.failures = 0
            return True
        return False

    def needs_detection(self) -> bool:
        """Whether the next connection must find out what is between the pool and PostgreSQL
        (:mod:`pgwarden.pgbouncer.detect`): once per pool, on its first connection."""
        return self.pooler is None

    def detected(self, pooler: Pooler, conn: Any) -> None:
        """The first connection found out what is in between: remember it, set what the driver
        needs on that connection (the next ones get it as connection parameters) and say so
        once."""
        self.pooler = pooler
        self.pooler_kw = pooler_kwargs(pooler, pq.version())
        given = self.config.kwargs if isinstance(self.config.kwargs, dict) else None
        for key, value in self.pooler_kw.items():
            if not given or key not in given:
                setattr(conn, key, value)
        log_detected(self.config.name, pooler, self.pooler_kw, given)

    @property
    def behind_pooler(self) -> bool:
        return self.pooler is not None and self.pooler.behind

    def connect_ok(self, conn: Any, now: float, elapsed: float,
                   on_collected: Callable[[ConnRef], None]) -> Slot:
        if self.failures:
            logger.info("pool %r: connected again after %d failed attempts in %.2f s",
                        self.config.name, self.failures, now - self.first_failure_at)
        self.failures = 0
        self.failure_kind = None
        self.size += 1
        slot = Slot(conn, self.gen, now, self.expire_at(now))
        self.slots.add(slot)
        self.tracker.connected(slot, elapsed)
        ref = ConnRef(conn, on_collected)
        ref.slot = slot
        slot.ref = ref
        return slot

    # -- checkout -------------------------------------------------------------------------

    def needs_probe(self, slot: Slot, now: float) -> bool:
        """Whether a checkout must validate with a round trip (idle past the window, or older
        than the last detected disconnect)."""
        return slot.gen < self.gen or now - slot.last_used > self.config.validation_window

    def validation_failed(self, slot: Slot, why: str) -> None:
        """A connection failed validation (checkout or ``check()``): it was lost while idle."""
        self.stats.validations_failed += 1
        self.stats.connections_lost += 1
        self.disconnect_detected(slot, why)

    def stale_at_checkout(self, slot: Slot, why: str) -> None:
        """A connection taken from the idle list failed validation: it is dropped and the
        caller's request goes on (its checkout of the dead one does not count)."""
        self.validation_failed(slot, why)
        self.tracker.requests_total -= 1

    def on_collected(self, ref: ConnRef) -> None:
        """Weakref callback: the application dropped a connection (any thread, inside the
        garbage collector: no locks, only a deque append). Reclaimed by
        :meth:`reclaim_collected`."""
        self.gc_queue.append(ref.slot)

    def disconnect_detected(self, slot: Slot | None, why: str) -> None:
        """First sign of a disconnect: the whole older generation of idle connections must be
        validated before use (they are discarded on checkout if dead)."""
        if slot is not None and slot.gen < self.gen:
            return  # already invalidated with its generation
        self.gen += 1
        self.stats.generations_invalidated += 1
        logger.info("pool %r: %s; validating the %d idle connections opened before it",
                    self.config.name, why, len(self.idle))

    def may_replay(self, slot: Slot | None, closed: bool, exc: BaseException, conn: Any) -> bool:
        """Whether a first statement that failed with ``exc`` on checked-out ``conn`` is worth
        asking the server about (see :mod:`pgwarden.pool.connection`)."""
        return (slot is not None and slot.out and not slot.dead and not closed
                and ended_by_server(exc, conn))

    def session_ended(self, slot: Slot, now: float) -> int:
        """The server ended a checked-out connection's session while going down: its slot is
        freed (for the new session the statement will run on). Returns connections to start."""
        self.stats.connections_lost += 1
        if not (self.pooler is not None and self.pooler.shares_sessions):
            # (behind PgBouncer in transaction mode the idle connections are PgBouncer's
            # clients, which a PostgreSQL restart leaves alone: nothing to validate)
            self.disconnect_detected(slot, f"connection pid {slot.pid} ended by the server")
        self.discard(slot)
        return self.to_start(now)

    def replayed(self) -> None:
        """A statement ran again on a new session; the checkout that fetched the session was
        the pool's own, not the application's."""
        self.stats.statements_replayed += 1
        self.tracker.requests_total -= 1

    def take_out(self, slot: Slot, now: float, holder: Any, stack: RawStack) -> None:
        self.tracker.checkout(slot, holder, stack, now)
        slot.conn = None

    def add(self, slot: Slot, conn: Any, now: float) -> None:
        """A ready connection: to the oldest waiter, else to the idle list."""
        if self.waiters:
            w = self.waiters.popleft()
            self.tracker.requests_waiting -= 1
            self.take_out(slot, now, w.holder, w.stack)
            self.tracker.waited(now - w.since)
            w.give(slot, conn)
        else:
            slot.conn = conn
            self.idle.append(slot)

    def enqueue(self, waiter: Any, now: float) -> int:
        """``waiter`` waits for a connection; returns the connection attempts to start."""
        self.waiters.append(waiter)
        self.tracker.queued()
        return self.to_start(now)

    def withdraw(self, waiter: Any) -> bool:
        """``waiter`` stops waiting (timeout, cancellation); False if it was served already."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            return False
        self.tracker.requests_waiting -= 1
        return True

    def returned(self, slot: Slot, now: float) -> None:
        """Bookkeeping of a return (the tracker logs "unleaked" for a reported leak)."""
        slot.last_used = now
        self.tracker.checkin(slot, now)

    def discard(self, slot: Slot) -> None:
        """A connection leaves the pool (closed by the shell)."""
        if slot.dead:
            return
        slot.dead = True
        self.size -= 1
        self.slots.discard(slot)
        self.tracker.closed(slot)

    def reusable(self, slot: Slot, now: float) -> bool:
        return (slot.gen >= self.drain_gen and slot.expire_at > now
                and self.size <= self.config.max_size)

    # -- maintenance ----------------------------------------------------------------------

    def expired_idle(self, now: float) -> list[Slot]:
        """Idle connections past max_lifetime, or idle past max_idle above min_size."""
        cfg = self.config
        out: list[Slot] = []
        keep: list[Slot] = []
        spare = self.size - cfg.min_size
        for slot in self.idle:  # oldest-used first (LIFO list)
            if slot.expire_at <= now or slot.gen < self.drain_gen:
                out.append(slot)
            elif spare > 0 and now - slot.last_used > cfg.max_idle:
                out.append(slot)
                spare -= 1
            else:
                keep.append(slot)
        self.idle = keep
        for slot in out:
            self.discard(slot)
        return out

    def reclaim_collected(self) -> list[Slot]:
        """Checked-out connections the application dropped: reported by the tracker, their
        slots freed."""
        found = []
        while self.gc_queue:
            slot = self.gc_queue.popleft()
            if slot.out and not slot.dead:
                self.tracker.collected(slot)
                self.discard(slot)
                found.append(slot)
        return found

    def discard_idle(self) -> list[Slot]:
        """Take every idle connection out of the pool (close, drain); the caller closes them."""
        idle, self.idle = self.idle, []
        for slot in idle:
            self.discard(slot)
        return idle

    def drain(self) -> list[Slot]:
        """psycopg_pool 3.3's ``drain``: every connection opened so far is retired (idle ones
        now, checked-out ones on return). Returns the idle slots to close."""
        self.gen += 1
        self.drain_gen = self.gen
        return self.discard_idle()

    def resize(self, min_size: int, max_size: int) -> list[Slot]:
        """New sizes (already checked); returns the surplus idle slots to close (surplus
        checked-out ones are discarded on return)."""
        self.config.min_size = min_size
        self.config.max_size = max_size
        surplus = []
        while self.size > max_size and self.idle:
            slot = self.idle.pop(0)
            self.discard(slot)
            surplus.append(slot)
        return surplus

    def init_timeout_error(self, timeout: float) -> PoolTimeout:
        """``wait()`` gave up: how many connections opened and the last connection error."""
        err = self.last_error
        detail = f": last connection error: {err}" if err else ""
        return PoolTimeout(
            f"pool {self.config.name!r} initialization incomplete after {timeout:.2f} s: "
            f"{self.size} of min_size={self.config.min_size} connections open{detail}"
        )

    # -- reporting -------------------------------------------------------------------------

    def holders(self) -> list[Holder]:
        return self.tracker.holders()

    def get_stats(self) -> dict[str, int]:
        """psycopg_pool's keys (same meaning) plus pgwarden's; see docs/pool.md."""
        cfg = self.config
        t = self.tracker
        s = t.stats()
        st = self.stats
        return {
            "pool_min": cfg.min_size,
            "pool_max": cfg.max_size,
            "pool_size": self.size + self.connecting,
            "pool_available": len(self.idle),
            "requests_waiting": len(self.waiters),
            "requests_num": s.requests_total + s.errors_total,
            "requests_queued": s.requests_queued_total,
            "requests_wait_ms": int(s.wait_seconds.sum * 1000),
            "requests_errors": s.errors_total,
            "returns_bad": st.returns_bad,
            "connections_num": s.connections_opened_total + s.connection_errors_total,
            "connections_ms": int(s.connect_seconds.sum * 1000),
            "connections_errors": s.connection_errors_total,
            "connections_lost": st.connections_lost,
            "usage_ms": int(s.use_seconds.sum * 1000),
            "leaks_detected": s.leaks_total,
            "leaks_unleaked": s.leaks_returned_total,
            "connections_reclaimed": s.collected_total,
            "returns_rolled_back": st.returns_rolled_back,
            "validations_num": st.validations_num,
            "validations_failed": st.validations_failed,
            "generations_invalidated": st.generations_invalidated,
            "statements_replayed": st.statements_replayed,
            "commits_read_only": st.commits_read_only,
            "holders_num": s.in_use,
            "holders_max_held_ms": int(s.holders_max_held_seconds * 1000),
            "leaks_current": s.leaks_current,
            "generation": self.gen,
        }

    def pop_stats(self) -> dict[str, int]:
        """``get_stats()``, then reset the counters (psycopg_pool's ``pop_stats``)."""
        rv = self.get_stats()
        self.stats = Stats()
        self.tracker.reset()
        return rv

    def timeout_error(self, timeout: float, now: float, waiter_since: float) -> PoolCheckoutTimeout:
        """The PoolTimeout that explains itself (sizes, waiters, holders, server state)."""
        cfg = self.config
        holders = self.holders()
        oldest = max((now - w.since for w in self.waiters), default=now - waiter_since)
        in_use = self.size - len(self.idle)
        waiting = len(self.waiters) + 1
        counts = (f"{in_use}/{cfg.max_size} in use, {len(self.idle)} idle, {waiting} waiting, "
                  f"oldest wait {oldest:.1f} s")
        kind = self.failure_kind if self.failures else None
        in_flight = now - self.last_attempt_at if self.connecting else 0.0
        no_answer = kind is None and in_flight >= NO_ANSWER_AFTER
        attempts = (f"{self.failures} connection attempts failed over "
                    f"{now - self.first_failure_at:.1f} s, last: {self.last_error}")
        if kind == "server_full":
            what = (f"pool {cfg.name!r} is exhausted ({counts}) and cannot grow: the server has "
                    f"no free connection slot ({attempts}); retrying about once a second")
        elif kind in ("rejected", "invalid"):
            what = (f"pool {cfg.name!r} cannot connect: the server rejects it ({counts}): "
                    f"{attempts}; fix the credentials or the DSN")
        elif kind == "client":
            what = (f"pool {cfg.name!r} cannot open connections: the server accepts them, "
                    f"then code run on each new one fails ({counts}): {attempts}; the "
                    "traceback is in the pgwarden.pool log")
        elif kind is not None:
            what = f"pool {cfg.name!r} cannot reach the server ({counts}): {attempts}"
        elif no_answer:
            what = (f"pool {cfg.name!r} cannot reach the server ({counts}): a connection "
                    f"attempt has had no answer for {in_flight:.1f} s (the server is down or "
                    "unreachable, or something in front of it accepts connections and never "
                    "answers)")
        elif in_use >= cfg.max_size:
            what = f"pool {cfg.name!r} is exhausted ({counts})"
        else:
            what = f"pool {cfg.name!r} has no connection available ({counts})"
        unreachable = no_answer or kind in ("unreachable", "going_down")
        if holders:
            what += "; longest holders: " + ", ".join(h.describe() for h in holders[:3])
            if len(holders) > 3:
                what += f", ... ({len(holders) - 3} more)"
        msg = f"couldn't get a connection after {timeout:.2f} s: {what}"
        return PoolCheckoutTimeout(
            msg,
            pool_name=cfg.name,
            timeout=timeout,
            pool_size=self.size,
            pool_min=cfg.min_size,
            pool_max=cfg.max_size,
            in_use=in_use,
            idle=len(self.idle),
            waiting=waiting,
            oldest_wait=oldest,
            holders=holders,
            server_unreachable=unreachable,
            server_full=kind == "server_full",
            last_connect_error=self.last_error,
            connect_failure=kind,
        )


class PoolProperties:
    """Configuration read-outs and ``repr`` shared by the sync and asyncio pools (psycopg_pool's
    attribute names)."""

    _config: Config
    _core: Core
    _closed: bool

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def min_size(self) -> int:
        return self._config.min_size

    @property
    def max_size(self) -> int:
        return self._config.max_size

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def timeout(self) -> float:
        return self._config.timeout

    @property
    def max_waiting(self) -> int:
        return self._config.max_waiting

    @property
    def max_lifetime(self) -> float:
        return self._config.max_lifetime

    @property
    def max_idle(self) -> float:
        return self._config.max_idle

    @property
    def reconnect_timeout(self) -> float:
        return self._config.reconnect_timeout

    @property
    def num_workers(self) -> int:
        return self._config.num_workers

    @property
    def conninfo(self) -> Any:
        return self._config.conninfo

    @property
    def kwargs(self) -> Any:
        return self._config.kwargs

    @property
    def leak_threshold(self) -> float | None:
        return self._config.leak_threshold

    @property
    def tracker(self) -> Tracker:
        """The pool's :class:`~pgwarden.observe.Tracker` (holders, leaks, counters, timings)."""
        return self._core.tracker

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        core = self._core
        return (f"<{type(self).__module__}.{type(self).__qualname__} {self.name!r} ({state}) "
                f"size={core.size} idle={len(core.idle)} in_use={core.size - len(core.idle)}>")


class PoolCheckoutTimeout(PoolTimeout):
    """:class:`~pgwarden.errors.PoolTimeout` with the numbers that explain it.

    Attributes:
        pool_name: the pool's ``name``.
        timeout: seconds the caller waited.
        pool_size / pool_min / pool_max: open connections and the configured bounds.
        in_use: connections checked out; idle: connections in the pool; waiting: callers
            waiting including this one; oldest_wait: seconds the oldest of them has waited.
        holders: :class:`~pgwarden.pool.Holder` snapshots, longest held first.
        server_unreachable: connection attempts fail or get no answer: the server is down or
            cannot be reached (the message says why).
        server_full: the server has no free slot ("too many clients already", "remaining
            connection slots are reserved").
        last_connect_error: first line of the last connection error, or ``None``.
        connect_failure: what the failing connection attempts mean
            (:data:`pgwarden.diagnose.KINDS`: ``unreachable``, ``going_down``,
            ``server_full``, ``rejected``, ...), or ``None`` while connecting works.
    """

    def __init__(self, msg: str, *, pool_name: str, timeout: float, pool_size: int,
                 pool_min: int, pool_max: int, in_use: int, idle: int, waiting: int,
                 oldest_wait: float, holders: list[Holder], server_unreachable: bool,
                 server_full: bool, last_connect_error: str | None,
                 connect_failure: str | None = None) -> None:
        super().__init__(msg)
        self.pool_name = pool_name
        self.timeout = timeout
        self.pool_size = pool_size
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.in_use = in_use
        self.idle = idle
        self.waiting = waiting
        self.oldest_wait = oldest_wait
        self.holders = holders
        self.server_unreachable = server_unreachable
        self.server_full = server_full
        self.last_connect_error = last_connect_error
        self.connect_failure = connect_failure


# -- validation protocol (driven by the shells) ----------------------------------------

WAIT_R = 1
WAIT_W = 2


class ProbeFailed(Exception):
    """The connection did not answer a validation round trip."""


def _round_trip(pgconn: Any, query: bytes) -> Generator[int, None, list[Any]]:
    """Send ``query`` (simple protocol) and read every result; yields WAIT_W / WAIT_R while
    the socket must be waited on; returns the results (``PGresult``)."""
    pgconn.send_query(query)
    while pgconn.flush():
        yield WAIT_W
    while True:
        pgconn.consume_input()
        if not pgconn.is_busy():
            break
        yield WAIT_R
    results = []
    while (res := pgconn.get_result()) is not None:
        results.append(res)
    return results


def probe(pgconn: Any) -> Generator[int, None, None]:
    """Send an empty query and read its answer; yields WAIT_R/WAIT_W when the socket must be
    waited on. Raises ProbeFailed (or psycopg.OperationalError) if the connection is dead."""
    if pgconn.status != CONN_OK:
        raise ProbeFailed("connection is closed")
    if pgconn.transaction_status != TS.IDLE:
        raise ProbeFailed("connection is not idle")
    ok = False
    for res in (yield from _round_trip(pgconn, b"")):
        if res.status == pq.ExecStatus.EMPTY_QUERY:
            ok = True
        else:
            err = res.error_message.decode(errors="replace").strip()
            raise ProbeFailed(err or f"unexpected result {res.status}")
    if not ok or pgconn.status != CONN_OK:
        raise ProbeFailed("no answer to the validation query")


def return_verdict(conn: Any, status: int) -> str | None:
    """Reset-on-return rule for a connection not idle: ``"rollback"`` when it is inside a
    transaction (rolled back with a warning naming the holder, as psycopg_pool does), else the
    reason to discard it (broken, or returned while a query runs, e.g. a cancelled task)."""
    if getattr(conn, "broken", False):
        # psycopg closed it after an error (its holder saw that error); not a "broken"
        # verdict, which would make the pool validate its other idle connections
        return "lost (the server ended the session or the network failed)"
    if conn.closed:
        return "closed by its holder"
    if status == TS.UNKNOWN:
        return "broken (connection lost)"
    if status == TS.ACTIVE:
        return "returned while a query was running"
    return "rollback"



def foreign_connection(pool: Any, conn: Any) -> ValueError:
    """The error for a connection given back to a pool it does not come from (``putconn``),
    worded as psycopg_pool's. The shells test ownership inline (hot path) and raise this."""
    owner = getattr(conn, "_pool", None)
    where = (f"it comes from pool {owner.name!r}" if owner is not None
             else "it doesn't come from any pool")
    return ValueError(f"can't return connection to pool {pool.name!r}, {where}: {conn}")


def log_rollback(pool_name: str, slot: Slot, conn: Any) -> None:
    logger.warning(
        "pool %r: connection pid %d returned inside a transaction (%s) by %s at %s; "
        "rolling back", pool_name, slot.pid, tx_state(conn), holder_name(slot.holder),
        format_location(slot.stack))



def end_of_block(status: int, closed: bool, failed: bool) -> str | None:
    """What ``with pool.connection() as conn:`` does to the transaction when the block ends:
    ``"commit"`` (no exception, inside a transaction), ``"rollback"`` (an exception, or a failed
    transaction) or ``None`` (nothing open). psycopg_pool's documented behaviour."""
    if closed or status == TS.IDLE:
        return None
    if not failed and status == TS.INTRANS:
        return "commit"
    if status in (TS.INTRANS, TS.INERROR):
        return "rollback"
    return None



def maintenance_tick(leak_threshold: float | None) -> float:
    """Seconds between maintenance passes: a quarter of the leak threshold, 50 ms to 1 s."""
    return 1.0 if leak_threshold is None else max(0.05, min(1.0, leak_threshold / 4))


def log_gave_up(pool_name: str) -> None:
    logger.warning("pool %r: could not connect for reconnect_timeout; calling reconnect_failed "
                   "and starting a new round of attempts", pool_name)


def read_only_transaction(conn: Any) -> bool:
    """Whether the transaction open on ``conn`` is one the server enforces as read-only: psycopg
    began it ``READ ONLY`` (``conn.read_only``), or the server reported
    ``default_transaction_read_only=on`` or ``in_hot_standby=on`` (ParameterStatus, PostgreSQL
    14+). Such a transaction wrote nothing, so a COMMIT the server never ran lost nothing.
    Not seen: a ``SET TRANSACTION READ WRITE`` run inside the transaction, which overrides
    ``default_transaction_read_only`` (not ``in_hot_standby``: a standby never writes)."""
    if getattr(conn, "read_only", None):
        return True
    status = conn.info.parameter_status
    return bool(status("in_hot_standby") == "on"
                or status("default_transaction_read_only") == "on")


def commit_lost_nothing(exc: BaseException, conn: Any) -> bool:
    """Whether a COMMIT that failed with ``exc`` may be treated as done: the server ended the
    session (so it rolled the transaction back) and the transaction was read-only."""
    return ended_by_server(exc, conn) and read_only_transaction(conn)
